"""The analysis tools refuse what would be silently wrong or would exhaust memory, before any work.

Silent cases that became errors (each once returned a plausible but wrong result): a negative or
zero ``batch_size`` (uninitialised memory read as layer outputs; the default used), ``layers=[]``
(an empty result), a callable ``output=`` returning NaN (every statistic NaN), a result file with
negative counts or H = 7.0.  Memory: the need is estimated from the sizes alone and a request
above the limit is refused with the size and the way out, checked here with the allocation
traced (nothing big is allocated before the refusal).
"""
import itertools
import json
import time
import tracemalloc

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.analysis import separation as sep
from nn_from_scratch.analysis.separation import core


def mlp():
    return nf.NeuralNetwork([nf.Linear(4, 6, name="hidden"), nf.ReLU(name="act"), nf.Linear(6, 3, name="out")],
                            loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=1)


X = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
Y = np.arange(30) % 3


@pytest.mark.parametrize("bs", [-1, 0, 2.5, True, "8"])
def test_class_separation_batch_size_is_checked_not_defaulted(bs):
    with pytest.raises(sep.SeparationError, match=rf"batch_size must be an int >= 1 .*received {bs!r}"):
        sep.class_separation(mlp(), X, Y, n_per_class=None, batch_size=bs)


def test_class_separation_any_valid_batch_size_gives_the_same_result():
    """Guards the other direction: batch size 1 (every sample alone) equals one batch of all."""
    net = mlp()
    a = sep.class_separation(net, X, Y, n_per_class=None, batch_size=1)
    b = sep.class_separation(net, X, Y, n_per_class=None, batch_size=30)
    np.testing.assert_array_equal(a.H, b.H)
    assert np.isfinite(a.H).all() and a.H.shape == (4, 3)


def test_class_separation_refuses_an_empty_layer_list():
    with pytest.raises(sep.SeparationError, match=r"layers=\[\] names no layer.*'hidden'"):
        sep.class_separation(mlp(), X, Y, n_per_class=None, layers=[])


def test_distance_memory_estimate_matches_the_blocks_of_a_pair():
    # two classes: own blocks m^2 + n^2, the cross block m n, the joint matrix (m + n)^2
    assert core.distance_bytes([3, 5]) == 8 * (9 + 25 + 15 + 64)
    # three classes: every own block, plus the largest pair's cross and joint blocks
    assert core.distance_bytes([2, 7, 4]) == 8 * (4 + 49 + 16 + 28 + 121)


def test_class_separation_on_2x20000_points_is_refused_before_allocating():
    """The audit's case: 2 x 20,000 points need about 22 GB; refused by name, quickly, with ~no memory."""
    Xb = np.zeros((40_000, 4), np.float32)
    Xb[:, 0] = np.arange(40_000)
    yb = np.arange(40_000) % 2
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(sep.SeparationError, match=r"need 20\.9 GiB .*MAX_DISTANCE_BYTES.*smaller n_per_class"):
            sep.class_separation(mlp(), Xb, yb, n_per_class=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 50 * 2 ** 20, peak


def test_henze_penrose_memory_guard(monkeypatch):
    monkeypatch.setattr(core, "MAX_DISTANCE_BYTES", core.distance_bytes([10, 10]) - 1)
    with pytest.raises(sep.SeparationError, match="henze_penrose: the distance blocks .*fewer points"):
        sep.henze_penrose(np.zeros((10, 2)), np.ones((10, 2)))
    monkeypatch.setattr(core, "MAX_DISTANCE_BYTES", core.distance_bytes([10, 10]))
    assert sep.henze_penrose(np.zeros((10, 2)), np.ones((10, 2))).H == pytest.approx(1 - 20 / 200)


# ---------------------------------------------------------------------- result files
def _written(tmp_path):
    res = sep.class_separation(mlp(), X, Y, n_per_class=None, layers=["input", "out"])
    path = res.to_json(tmp_path / "r.json")
    return res, json.loads(path.read_text())


def _edited(tmp_path, data, **change):
    data = dict(data, **change)
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("change,needle", [
    (lambda d: {"m": [-5] + d["m"][1:]}, "'m' holds the sample count -5"),
    (lambda d: {"n": [0] + d["n"][1:]}, "'n' holds the sample count 0"),
    (lambda d: {"m": [2.5] + d["m"][1:]}, "'m' must be 3 integer sample counts"),
    (lambda d: {"H": [[7.0] + r[1:] for r in d["H"]]}, "H must be equal to 1 - R"),
    (lambda d: {"p_value": [[1.5] + r[1:] for r in d["p_value"]]}, "p_value must be in [0, 1], found 1.5"),
    (lambda d: {"log_p": [[0.5] + r[1:] for r in d["log_p"]]}, "log_p must be <= 0"),
    (lambda d: {"R": [[-1.0] + r[1:] for r in d["R"]]}, "R must be in [R_min, R_max]"),
    (lambda d: {"R_min": [[-1.0] + r[1:] for r in d["R_min"]]}, "R_min must be >= 0"),
    (lambda d: {"R_max": [[1e6] + r[1:] for r in d["R_max"]]}, "R_max must be <= m + n - 1"),
    (lambda d: {"H": d["H"][:1]}, "'H' must be 2 rows (layers) of 3 values"),
    (lambda d: {"z": [r[:2] for r in d["z"]]}, "'z' must be 2 rows (layers) of 3 values"),
    (lambda d: {"H": [["x"] + r[1:] for r in d["H"]]}, "'H' holds values that are not numbers"),
    (lambda d: {"R": [[None] + r[1:] for r in d["R"]]}, "'R' has missing values"),
    (lambda d: {"classes": [0, 0, 1]}, "distinct integers"),
    (lambda d: {"classes": [0, 1, "2"]}, "distinct integers"),
    (lambda d: {"layers": []}, "non-empty list of layer names"),
    (lambda d: {"layers": ["input", "input"]}, "names a layer twice"),
    (lambda d: {"pairs": d["pairs"][::-1]}, "do not match the classes"),
    (lambda d: {"pairs": d["pairs"][:2]}, "3 classes make 3 pairs, the file lists 2"),
])
def test_from_json_validates_counts_ranges_and_shapes(tmp_path, change, needle):
    res, data = _written(tmp_path)
    assert sep.SeparationResult.from_json(_edited(tmp_path, data)).layers == res.layers   # unedited: loads
    with pytest.raises(sep.SeparationError, match="damaged") as err:
        sep.SeparationResult.from_json(_edited(tmp_path, data, **change(data)))
    assert needle in str(err.value)


def test_from_json_of_10000_classes_is_refused_before_building_pairs(tmp_path):
    """A 59 KB file listing 10,000 classes once built 5 x 10^7 pairs before any check."""
    data = {"format": sep.JSON_FORMAT, "layers": ["input"], "classes": list(range(10_000)), "pairs": [[0, 1]],
            "m": [5], "n": [5], **{k: [[0.0]] for k in ("H", "R", "z", "p_value", "log_p", "R_min", "R_max")}}
    p = tmp_path / "many.json"
    p.write_text(json.dumps(data))
    assert 40_000 < p.stat().st_size < 100_000
    t0 = time.perf_counter()
    with pytest.raises(sep.SeparationError, match="10000 classes make 49995000 pairs, the file lists 1"):
        sep.SeparationResult.from_json(p)
    assert time.perf_counter() - t0 < 1.0


def test_from_json_refuses_a_file_above_the_size_limit(tmp_path, monkeypatch):
    from nn_from_scratch.analysis.separation import result
    res, data = _written(tmp_path)
    p = _edited(tmp_path, data)
    monkeypatch.setattr(result, "MAX_JSON_BYTES", p.stat().st_size - 1)
    with pytest.raises(sep.SeparationError, match="larger than a separation result may be"):
        sep.SeparationResult.from_json(p)


def test_from_json_pairs_follow_itertools_order(tmp_path):
    res, data = _written(tmp_path)
    assert data["pairs"] == [list(p) for p in itertools.combinations([0, 1, 2], 2)]


# ---------------------------------------------------------------------- input gradients, curvature
def test_callable_output_returning_nan_is_refused_by_name():
    from nn_from_scratch.analysis.gradients import gradient_statistics, input_gradients
    net = mlp()
    with pytest.raises(ValueError, match=r"callable output= returned 18 NaN/Inf value\(s\) of 18"):
        input_gradients(net, X[:6], output=lambda out: out * np.nan)
    with pytest.raises(ValueError, match=r"callable output= returned 1 NaN/Inf"):
        gradient_statistics(net, X[:6], output=lambda out: np.where(np.arange(18).reshape(6, 3) == 4, np.inf, 1.0))
    with pytest.raises(ValueError, match="must return real numbers, it returned dtype complex128"):
        input_gradients(net, X[:6], output=lambda out: out.astype(np.complex128))
    # a finite upstream is accepted and gives the same as the named mode it spells out
    D = input_gradients(net, X[:6], output=lambda out: (out == out.max(axis=1, keepdims=True)).astype(out.dtype))
    np.testing.assert_array_equal(D, input_gradients(net, X[:6], output="max_logit"))


def test_kfac_factors_of_a_10000_wide_linear_is_refused_before_any_pass():
    """The audit's Linear(10000, 10000) has the same A; 2 outputs keep the test's own weights small."""
    from nn_from_scratch.analysis.curvature import MAX_FACTOR_SIZE, kfac_factors
    net = nf.NeuralNetwork([nf.Linear(10_000, 2, name="big")], loss_fn=nf.SoftMaxLoss(), workers=1)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"layer 'big' has factors A of 10001 x 10001 and G of 2 x 2; "
                                         r"building them needs about 2\.24 GiB .*max_factor_size=8192"):
        kfac_factors(net, np.ones((2, 10_000), np.float32), np.array([0, 1]))
    assert time.perf_counter() - t0 < 1 and MAX_FACTOR_SIZE == 8192
    small = nf.NeuralNetwork([nf.Linear(4, 3, name="s")], loss_fn=nf.SoftMaxLoss(), workers=1)
    with pytest.raises(ValueError, match="max_factor_size=4 on a side"):
        kfac_factors(small, X[:6], Y[:6], max_factor_size=4)
    f = kfac_factors(small, X[:6], Y[:6], max_factor_size=5)["s"]
    assert f.A.shape == (5, 5) and f.G.shape == (3, 3)


# ---------------------------------------------------------------------- permutation-test result files
def _result_file(tmp_path, extra=None, drop=(), replace=None):
    """A saved result, rewritten with ``extra`` members added, ``drop`` removed, ``replace`` swapped."""
    from nn_from_scratch.analysis.permutation import PermutationTestResult
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    PermutationTestResult(rng.random((3, 4)), rng.random((9, 3, 4))).save(good)
    with np.load(good, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k not in drop}
    arrays.update(replace or {})
    arrays.update(extra or {})
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    return good, path


@pytest.mark.parametrize("kw,needle", [
    (dict(extra={"junk": np.zeros(3)}), "unknown member(s) ['junk']"),
    (dict(drop=("info",)), "it lacks ['info']"),
    (dict(drop=("__format__",)), "no __format__"),
    (dict(replace={"info": np.zeros(3)}), "info must be one text value"),
    (dict(replace={"statistic": np.array(["a", "b"])}), "statistic must have a dtype of kind 'f'"),
    (dict(replace={"null_distribution": np.zeros((9, 4, 3))}), "null_distribution must have shape (B >= 1, *(3, 4))"),
    (dict(replace={"null_distribution": np.zeros((0, 3, 4))}), "null_distribution must have shape (B >= 1"),
    (dict(replace={"p_values": np.zeros(12)}), "p_values must have the statistic's shape (3, 4)"),
    (dict(replace={"info": np.array("[1, 2]")}), "info must be a JSON object"),
    (dict(replace={"info": np.array("{not json")}), "its info is not JSON"),
    (dict(replace={"statistic": np.full((3, 4), np.inf)}), "statistic holds infinite values"),
    (dict(replace={"p_values": np.full((3, 4), 0.5)}), "inconsistent"),
])
def test_permutation_result_load_checks_members_and_contents(tmp_path, kw, needle):
    from nn_from_scratch.analysis.permutation import PermutationTestResult
    good, path = _result_file(tmp_path, **kw)
    assert PermutationTestResult.load(good).statistic.shape == (3, 4)
    with pytest.raises(ValueError, match="PermutationTestResult.load") as err:
        PermutationTestResult.load(path)
    assert needle in str(err.value), str(err.value)


def test_permutation_result_zip_bomb_is_refused_fast_without_decompressing(tmp_path):
    """An unknown member of 256 MiB of zeros deflated to ~250 KB: refused from the zip directory alone
    (the audit's 2 MB / 2 GiB bomb took 12.7 s and 2.1 GB; benchmarks/result_file_checks.py)."""
    import io
    import zipfile
    from nn_from_scratch.analysis.permutation import PermutationTestResult
    good, _ = _result_file(tmp_path)
    n = 256 << 20
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
    with zipfile.ZipFile(good, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("junk.npy", "w", force_zip64=True) as f:
            f.write(buf.getvalue())
            chunk = bytes(16 << 20)
            for _ in range(n // len(chunk)):
                f.write(chunk)
    assert good.stat().st_size < 2 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"member 'junk.npy' would inflate .* zip bomb"):
            PermutationTestResult.load(good)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 4 << 20, peak
