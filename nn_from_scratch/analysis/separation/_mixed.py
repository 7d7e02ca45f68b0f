"""Mixed precision for wide layers: float32 Gram products, a float64 recheck of near-ties.

The float64 path (``_mst.Points.sqdist``) stays the definition; this one gives the same
trees, hence the same ``R``, ``H``, ``z`` and p-values, at about half the arithmetic cost
(float32 GEMM runs twice as fast as float64 on a CPU).  It is used where it pays: layers at
least ``MIXED_MIN_WIDTH`` wide (``precision="auto"``, the default of ``class_separation``).

Distances
---------
Points are centred in float64 (``a = z - mean``), rounded to float32 in feature chunks of
``K`` columns (``GRAM_CHUNK``), multiplied in float32 and the chunks' products summed in
float64.  Squared distances are ``|a_i|^2 + |a_j|^2 - 2 G_ij`` with the norms in float64.
Error bound (Higham, *Accuracy and Stability*, sections 3.1 and 3.5; u = 2^-24): a chunk's
dot product of length K is within ``gamma_K sum_k |a_ik a_jk|``, gamma_K = K u / (1 - K u);
over the chunks, by Cauchy-Schwarz, within ``gamma_K |a_i| |a_j|``; rounding the centred
points to float32 adds at most ``(2u + u^2) |a_i| |a_j|``.  So::

    |D2_mixed - D2| <= E_ij = 2 * 2 (gamma_K + 3u) |a_i| |a_j| + 1.01 (d + 4) u64 (|a_i| + |a_j|)^2

(the outer 2 of the first term: the factor of G in D2, doubled again as a safety margin;
the last term: the float64 norms and the float64 path's own error).

The recheck
-----------
Prim's tree ``T`` on the mixed distances is the float64 path's tree when it is the unique
minimum spanning tree with room to spare.  By the cycle property that holds when every edge
``e = (u, v)`` not in ``T`` is longer than every tree edge on the tree path from u to v::

    D2(e) > max_{f on path(u, v)} D2(f)          for every e not in T

Certified cheaply when ``D2_mixed(e) - E(e) > P(e) + 2 B`` with ``P`` the path maxima of the
upper bounds ``D2_mixed(f) + E(f)`` and ``B`` the float64 path's error bound.  The edges left
(the near-ties) are recomputed in float64 from the points themselves (``sum (z_u - z_v)^2``),
the tree edges too, and checked again with the path maxima of those exact values.  A pair
with an edge that still fails -- a tree that is wrong, or a tie closer than float64 itself
can resolve -- is computed again on the float64 path.  (The near-ties are checked first
against the tree's upper bounds, and only when that is not enough against its edges
recomputed in float64.)  Either way the result is the float64
path's.  ``stats`` counts the pairs, the rechecked edges and the pairs recomputed.
"""
import numpy as np

__all__ = ["GRAM_CHUNK", "MIXED_MIN_WIDTH", "gram_blocks", "certify", "exact_sqdist"]

#: features per float32 product (the error bound grows with it; the float64 sums with d / K)
GRAM_CHUNK = 2048
#: narrower layers use the float64 path under precision="auto" (the recheck would cost more
#: than the float32 products save)
MIXED_MIN_WIDTH = 4096
U32 = 2.0 ** -24
U64 = 2.0 ** -53


def error_coefficients(d, k=GRAM_CHUNK):
    """``(alpha, beta)`` of the bound ``E_ij = alpha |a_i||a_j| + beta (|a_i| + |a_j|)^2``."""
    k = min(int(k), int(d))
    gamma = k * U32 / (1 - k * U32)
    return 4.0 * (gamma + 3 * U32), (d + 4) * U64 * 1.01


def gram_blocks(pts, groups, requests, k=GRAM_CHUNK):
    """Mixed-precision squared distances for ``requests`` of class blocks.

    ``groups``: per class, the distinct-point ids (``pts`` numbering); ``requests``: a list of
    ``(i, None)`` (class i with itself) or ``(i, j)`` (class i rows, class j columns).  The
    feature chunks are the outer loop, so each chunk is centred and rounded once for every
    block.  Returns the list of float64 blocks.
    """
    used = sorted({i for i, j in requests} | {j for i, j in requests if j is not None})
    start, sl = 0, {}
    for i in used:
        sl[i] = slice(start, start + len(groups[i]))
        start += len(groups[i])
    rows = pts.first[np.concatenate([groups[i] for i in used])]
    G = [np.zeros((sl[i].stop - sl[i].start, sl[i if j is None else j].stop - sl[i if j is None else j].start))
         for i, j in requests]
    buf = np.empty((start, min(k, pts.d)), np.float32)
    for c0 in range(0, pts.d, k):
        c1 = min(c0 + k, pts.d)
        A = buf[:, :c1 - c0]
        np.subtract(pts.Z[rows, c0:c1], pts.mean[c0:c1], out=A, casting="unsafe")
        for (i, j), g in zip(requests, G):
            Ai = A[sl[i]]
            g += Ai @ Ai.T if j is None else Ai @ A[sl[j]].T
    out = []
    for (i, j), g in zip(requests, G):
        ni = pts.norms[groups[i]]
        nj = ni if j is None else pts.norms[groups[j]]
        g *= -2.0
        g += ni[:, None]
        g += nj[None, :]
        np.maximum(g, 0.0, out=g)
        if j is None:
            np.fill_diagonal(g, 0.0)
        out.append(g)
    return out


def exact_sqdist(pts, ids, u, v, chunk_bytes=64 * 2 ** 20):
    """``sum (z_u - z_v)^2`` in float64 for index pairs ``(u[t], v[t])`` of distinct points ``ids[.]``."""
    u, v = np.asarray(u, np.intp), np.asarray(v, np.intp)
    out = np.empty(len(u))
    step = max(1, chunk_bytes // (8 * max(pts.d, 1)))
    for a in range(0, len(u), step):
        ru = pts.Z[pts.first[ids[u[a:a + step]]]].astype(np.float64)
        ru -= pts.Z[pts.first[ids[v[a:a + step]]]]
        out[a:a + step] = np.einsum("ij,ij->i", ru, ru)
    return out


def _path_max(order_pos, child, parent, w):
    """``P[i, j]``: the largest ``w`` on the tree path between the i-th and j-th vertices in Prim order.

    ``child[s]`` joined the tree at step s (Prim order, vertex 0 first) by the edge to ``parent[s]``
    of weight ``w[s]``.  Rows and columns are in Prim order.
    """
    N = len(child) + 1
    P = np.zeros((N, N))
    for s in range(N - 1):
        i = s + 1
        p = order_pos[parent[s]]
        row = P[i, :i]
        np.maximum(P[p, :i], w[s], out=row)
        P[:i, i] = row
    return P


def certify(W, child, parent, radius, alpha, beta, exact, stats):
    """True when ``(child, parent)`` is the float64 path's tree for the mixed distances ``W``.

    ``radius``: ``|a_i|`` of the pair's points (centred, float64); ``exact(u, v)``: float64
    distances of index pairs (recomputed from the points).  See the module docstring.
    """
    N = W.shape[0]
    if N < 3:
        return True
    order = np.concatenate([[0], child])
    pos = np.empty(N, np.intp)
    pos[order] = np.arange(N)
    r = radius[order]
    Wp = W[np.ix_(order, order)]
    E = np.multiply.outer(r, r)
    E *= alpha
    s = np.add.outer(r, r)
    s *= s
    s *= beta
    E += s
    B = beta * 4.0 * float(r.max()) ** 2            # the float64 path's own error, at its largest
    wt = W[child, parent] + E[pos[child], pos[parent]]
    P = _path_max(pos, child, parent, wt)
    Wp -= E
    Wp -= P
    tree = np.zeros((N, N), bool)
    tree[pos[child], pos[parent]] = tree[pos[parent], pos[child]] = True
    np.fill_diagonal(tree, True)
    near = (Wp <= 2 * B) & ~tree
    iu, ju = np.nonzero(np.triu(near, 1))
    stats["pairs"] = stats.get("pairs", 0) + 1
    if len(iu) == 0:
        return True
    stats["rechecked_edges"] = stats.get("rechecked_edges", 0) + len(iu)
    w_near = exact(order[iu], order[ju]) * (1 - beta) - 2 * B
    left = ~(w_near > P[iu, ju])                     # against the tree's upper bounds first
    if left.any():
        # then with the tree edges that could be as long as a near-tie recomputed too (the
        # others' upper bounds are below every near-tie left, so they cannot be a path's maximum)
        stats["rechecked_trees"] = stats.get("rechecked_trees", 0) + 1
        sel = wt >= w_near[left].min()
        wt = wt.copy()
        wt[sel] = exact(child[sel], parent[sel]) * (1 + beta)
        P = _path_max(pos, child, parent, wt)
        left = ~(w_near > P[iu, ju])
    if left.any():
        stats["recomputed_pairs"] = stats.get("recomputed_pairs", 0) + 1
        return False
    return True
