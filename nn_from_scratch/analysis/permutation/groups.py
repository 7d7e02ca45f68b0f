"""Groups of inputs for the conditional test (docs/analysis/permutation.md, "groups").

A group map is an integer array of one sample's shape whose entries are the group ids
``0..G-1`` (every id used).  ``patch_groups`` builds square patches over the last two axes.
"""
import numbers

import numpy as np

__all__ = ["patch_groups", "check_groups", "group_sums"]


def patch_groups(input_shape, patch):
    """The group map of square ``patch x patch`` patches over the last two axes of ``input_shape``.

    Patches are numbered row by row; leading axes (channels) share their pixel's patch.  An
    image side that ``patch`` does not divide ends with narrower patches (``ceil(H / patch)``
    per column).  ``patch_groups((1, 28, 28), 7)`` gives 16 patches of 7x7.
    """
    where = "patch_groups"
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{where}: input_shape must be a tuple of axis sizes, received {input_shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"{where}: input_shape must have at least two axes (height, width) of size >= 1, received "
                         f"{input_shape!r}")
    if isinstance(patch, bool) or not isinstance(patch, numbers.Integral) or patch < 1:
        raise ValueError(f"{where}: patch must be an integer >= 1, received {patch!r}")
    h, w = shape[-2:]
    if patch > min(h, w):
        raise ValueError(f"{where}: patch must be at most the image's smaller side {min(h, w)} (input_shape "
                         f"{shape}), received {patch}")
    rows = np.arange(h) // patch
    cols = np.arange(w) // patch
    per_row = -(-w // patch)
    grid = rows[:, None] * per_row + cols[None, :]
    return np.broadcast_to(grid, shape).astype(np.int64)


def check_groups(groups, sample_shape, stat_shape):
    """``(flat int64 ids over stat_shape, G)`` for ``groups`` (None: every input its own group).

    ``groups`` must have one sample's shape (that of ``X[0]`` or of the network's input) and
    ids ``0..G-1`` with no gaps.
    """
    where = "permutation_test"
    size = int(np.prod(stat_shape))
    if groups is None:
        return np.arange(size, dtype=np.int64), size
    g = np.asarray(groups)
    shapes = {tuple(sample_shape), tuple(stat_shape)}
    if tuple(g.shape) not in shapes:
        raise ValueError(f"{where}: groups must be an integer array of one sample's shape "
                         f"{' or '.join(str(s) for s in sorted(shapes))}, received shape {tuple(g.shape)}")
    if g.dtype.kind not in "iu":
        if g.dtype.kind == "f" and np.all(np.isfinite(g)) and np.array_equal(g, np.round(g)):
            g = g.astype(np.int64)
        else:
            raise ValueError(f"{where}: groups must hold integer group ids 0..G-1, received dtype {g.dtype}")
    flat = g.astype(np.int64).reshape(-1)
    if flat.min() < 0:
        raise ValueError(f"{where}: groups must hold ids 0..G-1, received a negative id {int(flat.min())}")
    n_groups = int(flat.max()) + 1
    used = np.bincount(flat, minlength=n_groups) > 0
    if not used.all():
        gaps = np.flatnonzero(~used)
        raise ValueError(f"{where}: groups must use every id 0..{n_groups - 1} (no gaps), received ids missing "
                         f"{gaps[:10].tolist()}{' ...' if gaps.size > 10 else ''}")
    return flat, n_groups


def group_sums(values, flat_groups, n_groups):
    """``out[g] = sum of values over group g`` (float64; ``values`` of the group map's size)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.bincount(flat_groups, weights=v, minlength=n_groups)
