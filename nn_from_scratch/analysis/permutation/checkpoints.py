"""Checkpoints of a permutation test (docs/analysis/permutation.md, "checkpoints and resume").

Each finished replicate's statistic is written atomically to ``checkpoint_dir``
(``replicate-<key>.npz``) beside an ``experiment.json`` fingerprint of the experiment (data,
recipe, statistic, null, groups, sampler, seed, the build's initial parameters); a directory
of another experiment is refused; a rerun loads what is there and computes the rest (so a
larger ``n_permutations`` extends a run).
"""
import hashlib
import json
import os
import time
import warnings

import numpy as np

from ...atomic import _OLD_TMP, _TMP_SUFFIX, _clean_leftovers, _host
from ...training.serialization import write_npz_atomic
from .recipe import describe_kwargs, digest_array
from .result import _FORMAT

__all__ = ["CheckpointError", "Checkpoints", "digest_array", "describe_kwargs", "task_name", "fingerprint"]


class CheckpointError(ValueError):
    """A checkpoint directory that belongs to another experiment, or a damaged checkpoint file."""


def task_name(task):
    kind, j, b = task
    if kind == "assoc" or b == 0:
        return f"b{b:06d}"
    return f"{'g' if kind == 'cond' else 'f'}{j:06d}-b{b:06d}"


class Checkpoints:
    """``checkpoint_dir``: ``experiment.json`` (the fingerprint) and ``replicate-<key>.npz`` files.

    The experiment record is created exclusively (written to a temporary file, then hard-linked
    to ``experiment.json``, which fails when the name exists): of two experiments started
    together in one directory, one creates the record and the other reads it and is refused
    unless it is the same experiment.  Opening the directory removes the temporary files that
    killed writes left (those of a process of this host that is no longer running).  A
    replicate file whose statistic is NaN/Inf is recomputed with a warning, unless it is marked
    as the true result of a training that diverged."""

    def __init__(self, directory, fingerprint):
        self.dir = os.fspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.fingerprint = fingerprint
        path = os.path.join(self.dir, "experiment.json")
        text = json.dumps(fingerprint, indent=1, sort_keys=True)
        if not _create_exclusive_record(path, text):
            theirs = _read_record(path, self.dir)
            if theirs != fingerprint:
                diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
                raise CheckpointError(
                    f"permutation_test: checkpoint_dir {self.dir!r} holds replicates of another experiment "
                    f"(it differs in: {', '.join(diff)}); refusing to mix them - use a new directory or the "
                    "original settings")
        self.digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        _clean_dead_temporaries(self.dir)

    def _path(self, task):
        return os.path.join(self.dir, f"replicate-{task_name(task)}.npz")

    def load(self, task, shape):
        """``(statistic, init digest, diverged)`` of a finished replicate, or None (not there, or
        holding a non-finite statistic without the mark of a diverged training: recompute)."""
        path = self._path(task)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                stat, fp, digest = f["statistic"], str(f["experiment"]), str(f["init_digest"])
                diverged = bool(f["diverged"]) if "diverged" in f.files else False
        except Exception as exc:
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} is damaged "
                                  f"({type(exc).__name__}: {exc}); delete it to recompute that replicate") from None
        if fp != self.digest or tuple(stat.shape) != tuple(shape):
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} belongs to another experiment "
                                  f"(fingerprint or shape {tuple(stat.shape)} differs); refusing to mix")
        if stat.dtype.kind not in "fiu":
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} is damaged (its statistic has dtype "
                                  f"{stat.dtype}, expected floating point); delete it to recompute that replicate")
        stat = stat.astype(np.float64)
        if not diverged and not np.isfinite(stat).all():
            warnings.warn(f"permutation_test: checkpoint file {path!r} holds a non-finite statistic "
                          f"({int((~np.isfinite(stat)).sum())} of {stat.size} values NaN/Inf) without the mark of a "
                          "diverged training; recomputing that replicate", RuntimeWarning, stacklevel=2)
            return None
        return stat, digest, diverged

    def store(self, task, stat, digest, diverged=False):
        write_npz_atomic(self._path(task), {"statistic": stat, "experiment": np.array(self.digest),
                                            "init_digest": np.array(digest), "diverged": np.array(bool(diverged))})


def _create_exclusive_record(path, text):
    """Create ``path`` holding ``text`` unless it exists (atomic, exclusive); True when created here."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".experiment.json.{_host()}-{os.getpid()}-{os.urandom(6).hex()}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:                       # a file system without hard links: O_EXCL creation, then write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _read_record(path, directory, wait_s=2.0):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            if time.monotonic() > deadline:        # (a record being written without hard links: wait a moment)
                raise CheckpointError(f"permutation_test: checkpoint_dir {directory!r} has an unreadable "
                                      f"experiment.json ({exc}); use another directory") from None
            time.sleep(0.05)


def _clean_dead_temporaries(directory):
    """Remove the temporary files of writes into ``directory`` whose process is gone (``atomic``)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    bases, marker = set(), f".{_host()}-"
    for name in names:
        if name.startswith(".") and name.endswith(_TMP_SUFFIX):       # .<base>.<host>-<pid>-<random>.nnfs-tmp
            i = name.rfind(marker)
            if i > 1:
                bases.add(name[1:i])
        elif _OLD_TMP.match(name):
            bases.add("")
    for base in sorted(bases):
        _clean_leftovers(directory, base)


def fingerprint(X, y, fit_kwargs, statistic, output, index, seed, features, init_digest, conditional=None):
    """The experiment's identity; ``conditional``: ``{"groups": map, "sampler": name, "sequential": h}``
    (absent for the label-permutation tests, whose fingerprint is as it always was)."""
    out = {
        "format": _FORMAT, "X": digest_array(X), "y": digest_array(y), "fit_kwargs": describe_kwargs(fit_kwargs),
        "statistic": statistic, "output": output if isinstance(output, str) else
        f"callable:{getattr(output, '__module__', '?')}.{getattr(output, '__qualname__', repr(output))}",
        "index": index, "seed": int(seed), "features": None if features is None else list(features),
        "build_initial_parameters": init_digest,
    }
    if conditional is not None:
        sampler = conditional["sampler"]
        out.update({"null": "conditional", "groups": digest_array(np.asarray(conditional["groups"])),
                    "sampler": sampler if isinstance(sampler, str) else
                    f"callable:{getattr(sampler, '__module__', '?')}.{getattr(sampler, '__qualname__', repr(sampler))}",
                    "sequential": conditional["sequential"], "tested": conditional.get("tested")})
    return out
