"""Argument checks shared by the public entry points (docs/ARCHITECTURE.md, "The rules that keep it so").

The rule: a bad argument raises at once, with a message that names the owner (layer,
method), the argument, what was expected and what was received; nothing is silently
rounded (``2.7`` filters), wrapped or replaced by a default (``batch_size=0``).

* ``count(owner, name, value)``: an int ``>= minimum`` (bools and floats refused, even
  ``2.0``: a size computed as a float is usually a bug upstream);
* ``flag(owner, name, value)``: a bool (``"False"`` would be true);
* ``real(owner, name, value)``: a real number (not a bool, not a string);
* ``as_array(owner, name, value)``: an array, or a nested list of one shape (a ragged list of
  samples, or None, is a ``DataError`` naming the argument).

``TypeError`` for the wrong kind of value, ``ValueError`` for a value out of range.
"""
import numbers

import numpy as np

__all__ = ["count", "flag", "real", "is_int", "as_array"]


def is_int(value):
    """An integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def count(owner, name, value, minimum=1, allow_none=False):
    """``value`` as an int after checking it is an integer ``>= minimum`` (or None if allowed)."""
    if value is None and allow_none:
        return None
    if not is_int(value):
        hint = " (no rounding: pass an int)" if isinstance(value, (float, np.floating)) else ""
        raise TypeError(f"{owner}: {name} must be an int >= {minimum}{' or None' if allow_none else ''}, "
                        f"received {type(value).__name__} {value!r}{hint}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, received {value!r}")
    return int(value)


def flag(owner, name, value):
    """``value`` as a bool after checking it is one (NumPy's bool too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be True or False, received {type(value).__name__} {value!r}")
    return bool(value)


def real(owner, name, value):
    """``value`` as a float after checking it is a real number (not a bool or a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, received {type(value).__name__} {value!r}")
    return float(value)


class DataError(ValueError):
    """Training/evaluation data that the network cannot use (shape, length, labels, NaN)."""


def as_array(owner, name, value):
    """``value`` itself when it is an array (NumPy, CuPy: anything with a shape), else ``np.asarray(value)``;
    ``DataError`` for None and for ragged nested lists (samples of different shapes)."""
    if hasattr(value, "shape"):
        return value
    if value is None:
        raise DataError(f"{owner}: {name} must be an array, received None")
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        lengths = sorted({len(v) for v in value if hasattr(v, "__len__")}) if hasattr(value, "__iter__") else []
        raise DataError(f"{owner}: {name} must be an array whose samples all have one shape, received a ragged "
                        f"{type(value).__name__} (sample lengths {lengths[:6]}); pad or crop them to one shape") \
            from None
