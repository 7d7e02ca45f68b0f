"""Atomic writes of text, JSON and figures (model files: ``serialization.write_npz_atomic``).

``atomic_open(path)`` hands out a temporary file in ``path``'s folder; when the ``with``
block ends normally it is flushed to disk and renamed over ``path`` in one step, so a
reader never sees a half-written file; when the block raises, the temporary file is
removed and ``path`` is left as it was.  The new file gets the permissions an ordinary
``open`` would give it (``tempfile.mkstemp`` alone would make it private, 0600).
"""
import contextlib
import json
import os
import tempfile

__all__ = ["atomic_open", "write_text_atomic", "write_json_atomic", "new_file_mode"]


def new_file_mode():
    """Permissions a newly created file gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """``with atomic_open(path, "w" | "wb") as f:`` write to ``f``; ``path`` appears whole or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', received {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        os.chmod(tmp, new_file_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def write_json_atomic(path, data, indent=2):
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
