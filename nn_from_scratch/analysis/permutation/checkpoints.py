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

import numpy as np

from ...atomic import write_text_atomic
from ...backend import to_numpy
from ...training.serialization import write_npz_atomic
from .result import _FORMAT

__all__ = ["CheckpointError", "Checkpoints", "digest_array", "describe_kwargs", "task_name", "fingerprint"]


class CheckpointError(ValueError):
    """A checkpoint directory that belongs to another experiment, or a damaged checkpoint file."""


def digest_array(a):
    a = np.ascontiguousarray(to_numpy(a))
    return hashlib.sha256(f"{a.dtype}/{a.shape}".encode() + a.tobytes()).hexdigest()


def describe_kwargs(kw):
    out = {}
    for k, v in sorted((kw or {}).items()):
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            out[k] = "array:" + digest_array(v)
        elif isinstance(v, (tuple, list)) and any(hasattr(x, "shape") for x in v):
            out[k] = ["array:" + digest_array(x) if hasattr(x, "shape") else repr(x) for x in v]
        else:
            out[k] = repr(v)
    return out


def task_name(task):
    kind, j, b = task
    if kind == "assoc" or b == 0:
        return f"b{b:06d}"
    return f"{'g' if kind == 'cond' else 'f'}{j:06d}-b{b:06d}"


class Checkpoints:
    """``checkpoint_dir``: ``experiment.json`` (the fingerprint) and ``replicate-<key>.npz`` files."""

    def __init__(self, directory, fingerprint):
        self.dir = os.fspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.fingerprint = fingerprint
        path = os.path.join(self.dir, "experiment.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    theirs = json.load(f)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"permutation_test: checkpoint_dir {self.dir!r} has an unreadable "
                                      f"experiment.json ({exc}); use another directory") from None
            if theirs != fingerprint:
                diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
                raise CheckpointError(
                    f"permutation_test: checkpoint_dir {self.dir!r} holds replicates of another experiment "
                    f"(it differs in: {', '.join(diff)}); refusing to mix them - use a new directory or the "
                    "original settings")
        else:
            write_text_atomic(path, json.dumps(fingerprint, indent=1, sort_keys=True))
        self.digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()

    def _path(self, task):
        return os.path.join(self.dir, f"replicate-{task_name(task)}.npz")

    def load(self, task, shape):
        path = self._path(task)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                stat, fp, digest = f["statistic"], str(f["experiment"]), str(f["init_digest"])
        except Exception as exc:
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} is damaged "
                                  f"({type(exc).__name__}: {exc}); delete it to recompute that replicate") from None
        if fp != self.digest or tuple(stat.shape) != tuple(shape):
            raise CheckpointError(f"permutation_test: checkpoint file {path!r} belongs to another experiment "
                                  f"(fingerprint or shape {tuple(stat.shape)} differs); refusing to mix")
        return stat.astype(np.float64), digest

    def store(self, task, stat, digest):
        write_npz_atomic(self._path(task), {"statistic": stat, "experiment": np.array(self.digest),
                                            "init_digest": np.array(digest)})


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
