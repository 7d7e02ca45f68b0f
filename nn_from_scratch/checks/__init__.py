"""Checks of the numbers: float64 gradient checks, the TensorFlow/Keras cross-check, grading."""
