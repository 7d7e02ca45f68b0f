"""The network and its trainer, optimizers, schedules, callbacks, metrics and model files."""
