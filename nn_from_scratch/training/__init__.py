"""The network and its trainer, optimizers, schedules, callbacks, metrics and model files: one job per
module (``docs/ARCHITECTURE.md``, "What lives where")."""
