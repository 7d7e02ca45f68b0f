"""Atomic writes of text, JSON and figures (model files: ``serialization.write_npz_atomic``).

``atomic_open(path)`` hands out a temporary file in ``path``'s folder; when the ``with``
block ends normally it is flushed to disk and renamed over ``path`` in one step, so a
reader never sees a half-written file; when the block raises, the temporary file is
removed and ``path`` is left as it was.  The new file gets the permissions an ordinary
``open`` would give it: the temporary file is created with mode 0666 and the kernel applies
the process's umask, which is never changed here (changing it, even for a moment, would
affect files other threads create in that moment).
"""
import contextlib
import json
import os

__all__ = ["atomic_open", "write_text_atomic", "write_json_atomic", "new_file_mode"]


def _create_exclusive(directory, prefix, suffix, mode=0o666):
    """A new file ``directory/prefix<random>suffix`` opened for writing: ``(fd, path)``.

    Created with ``O_EXCL`` and ``mode``, to which the kernel applies the umask.
    """
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r} (100 names taken)")


def new_file_mode(directory=None):
    """Permissions a newly created file gets under the current umask (read without changing it)."""
    import tempfile  # noqa: PLC0415
    fd, probe = _create_exclusive(directory or tempfile.gettempdir(), ".umask-probe-", "")
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """``with atomic_open(path, "w" | "wb") as f:`` write to ``f``; ``path`` appears whole or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', received {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = _create_exclusive(directory, ".tmp-", suffix)
    try:
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
