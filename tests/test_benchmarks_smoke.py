"""Smoke tests of the benchmark scripts in ``benchmarks/``: they run, and their tables add up.

The scripts run in subprocesses with their ``--quick`` settings (a few hundred
samples); nothing here asserts a speed.  What is checked: exit code 0, one
table row per (framework, net, batch) with numbers that parse and are
positive, the ratio columns equal the quotient of the samples/s columns, and
the JSON holds the same figures.  TensorFlow and PyTorch parts are included
when those libraries are importable (they are in CI).
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)
import common  # noqa: E402

HAVE_TF = importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("keras") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_CUPY = importlib.util.find_spec("cupy") is not None
NETS = ("seed_cnn", "lenet5")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _start(script, *args, env=None):
    return subprocess.Popen([sys.executable, os.path.join(BENCH, script), *args], cwd=ROOT, env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both scripts' quick runs, started together to save wall time.

    Each gets one thread per library (``--threads 1``; OMP/OPENBLAS_NUM_THREADS=1 for
    the dry run), so the two processes do not fight over a 2-core CI machine.
    """
    tmp = tmp_path_factory.mktemp("bench")
    cpu_json, gpu_json = str(tmp / "cpu.json"), str(tmp / "gpu.json")
    one_thread = {**_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {
        "cpu": (_start("bench_cpu.py", "--quick", "--threads", "1", "--json", cpu_json), cpu_json),
        "gpu": (_start("bench_gpu.py", "--dry-run-numpy", "--quick", "--json", gpu_json, env=one_thread),
                gpu_json),
    }
    out = {}
    for key, (proc, path) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        data = None
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        out[key] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "json": data}
    return out


def _num(cell):
    return float(cell.replace(",", ""))


def _table(stdout, header_first="framework"):
    """Rows of the results table (``| a | b |`` lines after the header) as lists of cells."""
    rows, header = [], None
    for line in stdout.splitlines():
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == header_first:
            header = cells
            rows = []
            continue
        if header is not None:
            rows.append(dict(zip(header, cells)))
    return header, rows


def _check_rows(rows, frameworks, batches):
    by_key = {(r["framework"], r["net"], int(r["batch"])): r for r in rows}
    assert set(by_key) == {(f, n, b) for f in frameworks for n in NETS for b in batches}, sorted(by_key)
    for (fw, net, b), r in by_key.items():
        sps = _num(r["samples/s"])
        assert sps > 0 and math.isfinite(sps), r
        fit = _num(by_key[("ours.fit", net, b)]["samples/s"])
        step = _num(by_key[("ours.train_step", net, b)]["samples/s"])
        # the ratio columns are ours / this row, to the 2 printed decimals (and the samples/s rounding)
        for col, ours in (("ours.fit/this", fit), ("ours.step/this", step)):
            ratio = _num(r[col])
            assert ratio > 0
            assert ratio == pytest.approx(ours / sps, rel=0.02, abs=0.006), (col, r)
        if fw == "ours.fit":
            assert r["ours.fit/this"] == "1.00"
        if fw == "ours.train_step":
            assert r["ours.step/this"] == "1.00"
    return by_key


def test_bench_cpu_quick_runs_and_reports_every_framework(runs):
    run = runs["cpu"]
    assert run["rc"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    out = run["stdout"]
    frameworks = ["ours.fit", "ours.fit_1thread", "ours.train_step"]
    if HAVE_TF:
        frameworks += ["keras.fit", "keras.tf_function"]
    else:
        assert "Keras/TensorFlow skipped" in out
    if HAVE_TORCH:
        frameworks += ["torch.eager"]
    else:
        assert "PyTorch skipped" in out
    header, rows = _table(out)
    assert header is not None, out
    by_key = _check_rows(rows, frameworks, (50, 256))
    for (fw, _, _), r in by_key.items():
        assert _num(r["train MB"]) >= 0 and _num(r["total MB"]) >= 0
        if fw.startswith("ours."):
            assert _num(r["traced MB"]) > 0          # tracemalloc sees our arrays
    # machine information and the verdict lines are printed
    for key in ("cpu", "numpy", "numpy_blas"):
        assert re.search(rf"^\s+{key}\s+\S", out, re.M), key
    if HAVE_TF:
        assert re.search(r"^\s+tensorflow\s+\d", out, re.M)
    if HAVE_TORCH:
        assert re.search(r"^\s+torch\s+\d", out, re.M)
        assert "threads torch: torch intra=1" in out     # --threads 1 reached torch
    assert "Target: ours faster than every other framework" in out
    # the JSON holds the same figures as the table
    data = run["json"]
    assert data["machine"]["numpy"] == np.__version__
    assert len(data["results"]) == len(rows)
    for res in data["results"]:
        row = by_key[(res["framework"], res["net"], res["batch"])]
        assert res["error"] is None
        assert res["samples_per_s"] > 0 and math.isfinite(res["final_loss"])
        assert f"{res['samples_per_s']:,.0f}" == row["samples/s"]
        assert res["samples_timed"] == res["plan"]["epochs"] * res["plan"]["n_data"] >= 300
        assert res["params"] == common.NET_PARAMS[res["net"]]   # the same architecture in every framework
    assert {(v["net"], v["batch"]) for v in data["verdicts"]} == {(n, b) for n in NETS for b in (50, 256)}


def test_bench_gpu_dry_run_quick_runs_the_same_code_on_numpy(runs):
    run = runs["gpu"]
    assert run["rc"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    out = run["stdout"]
    assert "DRY RUN" in out
    frameworks = ["ours.fit", "ours.train_step"] + (["torch.eager"] if HAVE_TORCH else [])
    header, rows = _table(out)
    by_key = _check_rows(rows, frameworks, (64, 256))
    for r in by_key.values():
        assert _num(r["host RSS MB"]) >= 0
        assert r["device MB"] == "-"                 # no device in the dry run
    data = run["json"]
    assert data["dry_run_numpy"] is True
    for res in data["results"]:
        assert res["samples_per_s"] > 0 and math.isfinite(res["final_loss"])
        assert res["params"] == common.NET_PARAMS[res["net"]]
    if HAVE_TORCH:
        assert len(data["verdicts"]) == 2 * len(NETS) * 2


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed: the no-GPU message cannot be provoked")
def test_bench_gpu_without_cupy_says_what_is_missing():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_gpu.py"), "--quick"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs CuPy and a CUDA GPU" in proc.stderr
    assert "--dry-run-numpy" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_covers_the_samples_and_warms_up_every_batch_shape():
    p = common.Plan(5000, 12000, 256, warmup_batches=2)
    assert (p.n_data, p.epochs, p.samples_done) == (5000, 3, 15000)
    sl = p.slices()
    assert sl[0] == (0, 256) and sl[-1] == (4864, 5000)
    assert sum(b - a for a, b in sl) == 5000
    assert all(sl[i][1] == sl[i + 1][0] for i in range(len(sl) - 1))
    warm = [b - a for a, b in p.slices(p.n_warmup)]
    assert warm == [256, 256, 5000 % 256]           # every shape of the timed run, the odd one too
    small = common.Plan(5000, 300, 50, warmup_batches=1)
    assert (small.n_data, small.epochs, small.samples_done, small.n_warmup) == (300, 1, 300, 50)


def test_peak_rss_sees_a_short_lived_allocation():
    with common.PeakRSS(0.001) as mem:
        mem.start_segment()
        a = np.ones(64 * 2**20 // 8)                 # 64 MB, touched
        time.sleep(0.05)
        del a
    assert mem.peak_mb is not None
    assert 56 <= mem.segment_mb <= 200
    assert mem.peak_mb >= mem.segment_mb - 1


def test_other_load_is_a_share():
    with common.OtherLoad() as o:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.2:         # keep our own CPU busy: not counted as "others"
            pass
    assert o.percent is None or 0 <= o.percent <= 100


class _FakeLoad:
    """Stands in for common.OtherLoad: reports the next of a list of shares."""

    shares = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.percent = _FakeLoad.shares.pop(0)
        return False


def test_timing_reruns_disturbed_repeats_and_reports_the_quiet_ones(monkeypatch):
    monkeypatch.setattr(common, "OtherLoad", _FakeLoad)
    durations = iter([5.0, 1.0, 40.0, 2.0, 3.0])
    clock = {"t": 0.0}
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["t"])

    def once():
        clock["t"] += next(durations)
        return 0.5

    plan = common.Plan(5000, 1000, 100)
    case = common.Case("x", "seed_cnn", 100, plan)
    _FakeLoad.shares = [60.0, 0.0, 90.0, 5.0, 0.0]
    common.Timing(repeats=3, retries=2).run(case, once)
    assert case.seconds == [5.0, 1.0, 40.0, 2.0, 3.0]       # two disturbed repeats were run again
    assert case.samples_per_s == pytest.approx(1000 / 2.0)   # median of the quiet 1, 2, 3 s
    assert case.other_cpu_pct == 5.0
    # without retries a disturbed repeat is kept, and only the quiet ones count
    case2 = common.Case("x", "seed_cnn", 100, plan)
    durations = iter([4.0, 1.0])
    _FakeLoad.shares = [60.0, 0.0]
    common.Timing(repeats=2).run(case2, once)
    assert case2.seconds == [4.0, 1.0] and case2.samples_per_s == pytest.approx(1000.0)
    # all disturbed: the median of all, flagged with the worst share
    case3 = common.Case("x", "seed_cnn", 100, plan)
    durations = iter([4.0, 2.0])
    _FakeLoad.shares = [60.0, 30.0]
    common.Timing(repeats=2).run(case3, once)
    assert case3.samples_per_s == pytest.approx(1000 / 3.0) and case3.other_cpu_pct == 60.0


def test_interleaved_timing_goes_round_robin_and_keeps_each_cases_retries(monkeypatch):
    """``interleave=True``: ``run`` queues, ``flush`` times one repeat of each case in turn; a
    disturbed repeat is run again in a later round; a case that raises leaves the rotation."""
    monkeypatch.setattr(common, "OtherLoad", _FakeLoad)
    clock = {"t": 0.0}
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["t"])
    order = []

    def runner(name, seconds):
        def once():
            order.append(name)
            clock["t"] += seconds
            return 0.5
        return once

    def broken():
        order.append("c")
        raise RuntimeError("out of memory")

    plan = common.Plan(5000, 1000, 100)
    a, b, c = (common.Case(n, "lenet5", 100, plan) for n in "abc")
    timing = common.Timing(repeats=2, retries=1, interleave=True)
    _FakeLoad.shares = [0.0, 50.0, 0.0, 0.0, 0.0, 0.0]     # b's first repeat is disturbed
    for case, once in ((a, runner("a", 1.0)), (b, runner("b", 2.0)), (c, broken)):
        timing.run(case, once)
    assert order == [] and len(timing.queued) == 3         # nothing timed before flush
    timing.flush()
    assert order == ["a", "b", "c", "a", "b", "b"]
    assert a.seconds == [1.0, 1.0] and b.seconds == [2.0, 2.0, 2.0] and c.seconds == []
    assert c.error == "RuntimeError: out of memory" and a.error is None and b.error is None
    assert timing.queued == [] and _FakeLoad.shares == []
    assert b.samples_per_s == pytest.approx(1000 / 2.0)


def test_profile_layers_holds_blas_to_the_threads_asked_for(tmp_path):
    out = tmp_path / "prof.json"
    r = subprocess.run([sys.executable, os.path.join(BENCH, "profile_layers.py"), "--quick", "--nets", "lenet5",
                        "--batch-sizes", "4", "--blas-threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "BLAS threads 1;" in r.stdout
    data = json.loads(out.read_text())
    assert data["blas_threads"] == 1 and len(data["profiles"]) == 1


def test_fit_validation_prints_a_ratio_per_batch_size():
    r = subprocess.run([sys.executable, os.path.join(BENCH, "fit_validation.py"), "--batch-sizes", "50",
                        "--runs", "1", "--epochs", "2", "--first", "2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"batch   50: median step +([0-9.]+) ms; first 2 steps after a validation / median step: "
                  r"([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:]
    assert float(m.group(1)) > 0 and 0 < float(m.group(2)) < 100


class _FakePool:
    """CuPy's MemoryPool contract as bench_gpu uses it: malloc, used_bytes, total_bytes, free_all_blocks."""

    def __init__(self):
        self.used, self.total = 0, 0

    def malloc(self, size):
        self.used += size
        self.total = max(self.total, self.used)
        return size

    def free(self, size):
        self.used -= size

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total

    def free_all_blocks(self):
        self.total = self.used


class _FakeCupy:
    """Just enough of CuPy's API (as documented) to run bench_gpu.CupyDevice without a GPU."""

    __version__ = "0.fake"

    def __init__(self):
        import contextlib
        import types
        self.pool = _FakePool()
        self.allocator = self.pool.malloc
        self.syncs = 0
        fake = self

        class Device:
            id = 0

            def synchronize(self):
                fake.syncs += 1

        @contextlib.contextmanager
        def using_allocator(fn):
            old, fake.allocator = fake.allocator, fn
            try:
                yield
            finally:
                fake.allocator = old

        runtime = types.SimpleNamespace(
            getDeviceProperties=lambda i: {"name": b"Fake GPU"}, runtimeGetVersion=lambda: 12020,
            driverGetVersion=lambda: 12040, memGetInfo=lambda: (30 * 2**30, 40 * 2**30))
        self.cuda = types.SimpleNamespace(Device=Device, using_allocator=using_allocator, runtime=runtime)

    def get_default_memory_pool(self):
        return self.pool


def test_cupy_device_tracks_the_peak_through_the_allocator_hook():
    import bench_gpu
    cp = _FakeCupy()
    dev = bench_gpu.CupyDevice(cp)
    info = dev.describe()
    assert info["device"].startswith("Fake GPU") and info["cuda_runtime"] == "12.2"
    cp.pool.malloc(3 * 2**20)                    # parameters + data, alive before the run
    dev.begin()

    def run():                                   # allocations go through the current allocator
        a = cp.allocator(5 * 2**20)
        b = cp.allocator(2 * 2**20)
        cp.pool.free(a)
        c = cp.allocator(1 * 2**20)
        cp.pool.free(b)
        cp.pool.free(c)
    peak = dev.peak_allocated_mb(run)
    assert peak == pytest.approx(7.0)            # 5 + 2 MB alive at once, above the 3 MB held before
    assert cp.allocator == cp.pool.malloc        # the hook is removed afterwards
    assert dev.reserved_mb() == pytest.approx(7.0)   # the pool's cache beyond the 3 MB of live arrays
    assert cp.syncs >= 3
