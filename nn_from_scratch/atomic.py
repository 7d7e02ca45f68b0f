"""Atomic writes of text, JSON, figures and ``.npz`` files (model files, results).

``atomic_open(path)`` hands out a temporary file in ``path``'s folder; when the ``with``
block ends normally it is flushed to disk and renamed over ``path`` in one step, so a
reader never sees a half-written file; when the block raises, the temporary file is
removed and ``path`` is left as it was.  The new file gets the permissions an ordinary
``open`` would give it: the temporary file is created with mode 0666 and the kernel applies
the process's umask, which is never changed here (changing it, even for a moment, would
affect files other threads create in that moment).

``write_npz_atomic(path, arrays)`` (model files) goes further:

* The temporary file is named ``.<target name>.<host>-<pid>-<random>.nnfs-tmp``; a save
  removes the ones a killed save (``kill -9``, power loss) left for the same target, i.e.
  those of a process of this host that is no longer running (and the ``.tmp-XXXXXXXX.npz``
  files of earlier versions, once over an hour old).
* Re-saving over an existing file keeps its permission bits (a ``0600`` file stays ``0600``);
  a new file gets ``0666`` less the umask, as ``open`` would give it.
* A path that is a symbolic link is written through: the file the link points to is
  replaced (atomically, in its own directory) and the link stays a link.
* Errors name the path asked for, never the temporary name.
"""
import contextlib
import json
import os
import re
import socket
import stat
import time

import numpy as np

from .backend import to_numpy

__all__ = ["atomic_open", "write_text_atomic", "write_json_atomic", "new_file_mode", "write_npz_atomic",
           "check_path"]


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


# ----------------------------------------------------------------------------- .npz files
_TMP_SUFFIX = ".nnfs-tmp"
_OLD_TMP = re.compile(r"^\.tmp-[A-Za-z0-9_]{8}\.npz$")     # tempfile.mkstemp names of earlier versions
_OLD_TMP_AGE_S = 3600.0


def _host():
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        return True
    return True


def _clean_leftovers(directory, base):
    """Remove the temporary files that interrupted saves of ``base`` (in ``directory``) left."""
    prefix, host = f".{base}.", _host()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        full = os.path.join(directory, name)
        if name.startswith(prefix) and name.endswith(_TMP_SUFFIX):
            tag = name[len(prefix):-len(_TMP_SUFFIX)]          # host-pid-random
            parts = tag.rsplit("-", 2)
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
                continue
        elif _OLD_TMP.match(name):
            try:
                if now - os.lstat(full).st_mtime < _OLD_TMP_AGE_S:
                    continue
            except OSError:
                continue
        else:
            continue
        try:
            os.unlink(full)
        except OSError:
            pass


def write_npz_atomic(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as .npz, atomically (see the module docstring:
    temporary files, permissions, symbolic links)."""
    check_path("save", path)
    asked = os.fsdecode(os.fspath(path))
    target = os.path.realpath(asked)            # through a symbolic link: the link stays
    if os.path.isdir(target):
        raise IsADirectoryError(f"cannot save to {asked!r}: it is a directory")
    directory, base = os.path.split(target)
    _clean_leftovers(directory, base)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)        # re-save: keep the file's mode
    except FileNotFoundError:
        mode = None                                         # new: 0666 less the umask, from the kernel
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot save to {asked!r}: {exc.strerror}") from None
    tmp = None
    try:
        fd, tmp = _create_exclusive(directory, f".{base}.{_host()}-{os.getpid()}-", _TMP_SUFFIX,
                                    0o600 if mode is not None else 0o666)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: to_numpy(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
        try:                                    # the rename itself to disk
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot save to {asked!r}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def check_path(what, path):
    """``TypeError`` naming ``what`` unless ``path`` is a str, bytes or ``os.PathLike``."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{what}: path must be a str, bytes or os.PathLike (pathlib.Path), received "
                        f"{type(path).__name__} {path!r}")
