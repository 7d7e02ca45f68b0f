"""permutation_test's workers under faults: deadlines on stopped workers (threads, loky, dask),
bounded n_jobs, lazily drawn tasks, no worker outliving a killed run, per-replicate callbacks
and a fingerprint that describes them, the checkpoint directory's experiment record, NaN
checkpoints and diverged replicates."""
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from nn_from_scratch.analysis import permutation as pt
from nn_from_scratch.analysis.permutation import checkpoints as ck
from nn_from_scratch.analysis.permutation import parallel as par
from nn_from_scratch.analysis.permutation import recipe
from nn_from_scratch.callbacks import (CSVLogger, EarlyStopping, LambdaCallback, LearningRateScheduler,
                                       ModelCheckpoint, ReduceLROnPlateau, TerminateOnNaN)
from nn_from_scratch.training.callbacks import Callback
from nn_from_scratch.training.history import TrainingWarning
from permutation_helpers import (FIT, assert_same, build_mlp, diverging_build_mlp, failing_build_mlp, make_data,
                                slow_build_mlp, stopping_build_mlp)

B = 6
SEED = 11
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def run(fit=FIT, **kw):
    X, y = make_data()
    args = dict(n_permutations=B, output="output", progress=False, seed=SEED)
    args.update(kw)
    return pt.permutation_test(args.pop("build", build_mlp), X, y, fit, **args)


@pytest.fixture(scope="module")
def reference():
    return run()


two_cores = pytest.mark.skipif(par.usable_cores() < 2, reason="n_jobs is capped at the usable cores: needs 2")


def build_seed(b):
    return pt.replicate_seeds(SEED, b)[0]


# ------------------------------------------------------------------ deadlines on stopped workers
_release = threading.Event()


def sleepy_build(seed):
    """Replicate 2's network, built in a worker thread, sleeps until released (a hung worker)."""
    if seed == build_seed(2) and threading.current_thread() is not threading.main_thread():
        _release.wait(60)
    return build_mlp(seed)


@two_cores
def test_a_sleeping_thread_worker_is_overtaken_in_process(reference):
    _release.clear()
    t0 = time.monotonic()
    try:
        with pytest.warns(pt.ReplicateDeadlineWarning, match="b000002.*threading.*in this process"):
            res = run(build=sleepy_build, n_jobs=2, backend="threading", deadline=1.0)
    finally:
        _release.set()
    took = time.monotonic() - t0
    for t in threading.enumerate():                     # the released thread finishes and ends
        if t.name.startswith("nnfs-replicate"):
            t.join(timeout=30)
    assert took < 30                                    # not the 60 s the thread sleeps
    assert_same(res, reference)


def _children(pid, trackers=False):
    """``(pid, state)`` of the child processes of ``pid`` (without the resource trackers, which live
    as long as their parent, unless ``trackers``)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) != pid:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    tracker = b"resource_tracker" in f.read()
            except OSError:
                continue
            if trackers or not tracker:
                out.append((int(d), fields[0]))         # fields[0]: the state (R, S, T stopped, Z zombie)
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@two_cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stopped_loky_worker_is_overtaken_and_killed(reference, monkeypatch):
    monkeypatch.setenv("PERM_STOP_SEED", str(build_seed(3)))
    monkeypatch.setenv("PERM_STOP_PARENT", str(os.getpid()))
    before = {p for p, _ in _children(os.getpid())}
    t0 = time.monotonic()
    with pytest.warns(pt.ReplicateDeadlineWarning, match="b000003.*loky"):
        res = run(build=stopping_build_mlp, n_jobs=2, backend="loky", deadline=2.0)
    assert time.monotonic() - t0 < 60
    assert_same(res, reference)
    time.sleep(0.5)
    left = [(p, s) for p, s in _children(os.getpid()) if p not in before and s != "Z"]
    assert left == []                                   # the stopped worker was killed, the others ended


def test_a_stopped_dask_worker_is_overtaken_and_gets_no_more_tasks(reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_class=distributed.Nanny) as cl, distributed.Client(cl) as client:
        pids = client.run(os.getpid)
        stopped_addr, stopped = sorted(pids.items())[0]
        os.kill(stopped, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.warns(pt.ReplicateDeadlineWarning, match="dask") as record:
                res = run(n_jobs=2, backend="dask", deadline=2.0)
            took = time.monotonic() - t0
        finally:
            os.kill(stopped, signal.SIGCONT)
    assert took < 90
    assert_same(res, reference)
    late = [w for w in record if issubclass(w.category, pt.ReplicateDeadlineWarning)]
    assert len(late) == 1                  # the stopped worker was given one replicate, then no more


def test_a_killed_dask_worker_still_gives_the_reference(reference, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("PERM_TEST_SLEEP", "0.3")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_class=distributed.Nanny) as cl, distributed.Client(cl) as client:
        victim = sorted(client.run(os.getpid).values())[0]
        killer = threading.Timer(1.5, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            res = run(build=slow_build_mlp, n_jobs=2, backend="dask", deadline=30.0)
        finally:
            killer.cancel()
    assert not _alive(victim)
    assert_same(res, reference)


@pytest.mark.parametrize("backend", ["threading", "loky", "sequential"])
def test_an_error_in_a_worker_reaches_the_caller_and_leaves_no_worker(backend, monkeypatch):
    import threading as th
    monkeypatch.setenv("PERM_FAIL_SEED", str(build_seed(4)))
    before = {p for p, _ in _children(os.getpid())}
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"build failed for seed {build_seed(4)}"):
        run(build=failing_build_mlp, n_jobs=2, backend=backend)
    assert time.monotonic() - t0 < 60
    time.sleep(0.5)
    assert [p for p, s in _children(os.getpid()) if p not in before and s != "Z"] == []
    assert [t.name for t in th.enumerate() if t.name.startswith("nnfs-replicate")] == []


def test_deadline_is_checked():
    for bad in (0, -1, float("nan"), "60", True):
        with pytest.raises(ValueError, match="deadline must be a number of seconds > 0.*received"):
            run(deadline=bad, n_permutations=1)


def test_deadline_rule():
    r = par.Runner(lambda t: t, 1, "sequential", 1, deadline=5.0)
    assert r.limit() == 10 * 5.0                       # before any replicate finished: factor x deadline
    r.slowest = 0.2
    assert r.limit() == 5.0                            # the floor
    r.slowest = 3.0
    assert r.limit() == 30.0                           # factor x the slowest replicate
    assert par.Runner(lambda t: t, 1, "sequential", 1).floor == par.DEADLINE_FLOOR_S


# ------------------------------------------------------------------ n_jobs, lazy tasks
@pytest.mark.parametrize("n_jobs,backend,n_tasks,expected", [
    (1, "loky", 10, 1), (-1, "threading", 1, 1), (-1, "loky", 2, "min(cores,2)"),             # capped at the tasks
    (-1, "loky", 100, "cores"), (-2, "threading", 100, "cores-1"), (5, "sequential", 10, 1),
])
def test_n_jobs_resolution(n_jobs, backend, n_tasks, expected):
    cores = par.usable_cores()
    want = {"cores": cores, "cores-1": max(1, cores - 1), "min(cores,2)": min(cores, 2)}.get(expected, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert par.resolve_n_jobs(n_jobs, backend, n_tasks) == want


def test_n_jobs_above_the_cap_is_capped_with_a_warning():
    cap = par.JOBS_PER_CORE * par.usable_cores()
    with pytest.warns(UserWarning, match=f"n_jobs=1000 capped at {cap} workers"):
        assert par.resolve_n_jobs(1000, "loky", 10 ** 6) == cap
    with pytest.warns(UserWarning, match="n_jobs=50 capped at 8.*dask"):
        assert par.resolve_n_jobs(50, "dask", 100, capacity=8) == 8


@pytest.mark.parametrize("n_jobs,match", [
    (0, "non-zero integer"), (True, "non-zero integer"), (1.5, "non-zero integer"), ("2", "non-zero integer"),
    (-10 ** 6, "leaves no worker"),
])
def test_absurd_n_jobs_is_refused(n_jobs, match):
    with pytest.raises(ValueError, match=f"n_jobs.*{match}|{match}.*n_jobs"):
        run(n_jobs=n_jobs, n_permutations=1)


def test_n_jobs_1000_starts_a_bounded_number_of_threads(reference):
    seen = []

    def build(seed):
        seen.append(threading.active_count())
        return build_mlp(seed)
    base = threading.active_count()
    with pytest.warns(UserWarning, match="capped"):
        res = run(build=build, n_jobs=1000, backend="threading")
    assert max(seen) <= base + par.JOBS_PER_CORE * par.usable_cores()
    assert_same(res, reference)


def test_tasks_are_drawn_lazily():
    drawn = []

    def source():
        for i in itertools.count():
            drawn.append(i)
            yield ("assoc", None, i)
    with par.Runner(lambda t: t, 2, "threading", 10 ** 9) as runner:
        got = list(itertools.islice(runner.run(source()), 5))
    assert len(got) == 5 and len(drawn) <= 5 + 2 + 1              # at most one per worker in flight


def test_an_absurd_number_of_permutations_is_refused_before_anything_runs():
    calls = []

    def build(seed):
        calls.append(seed)
        return build_mlp(seed)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"n_permutations=1000000000 means 1000000001 trained networks.*GiB"):
        run(build=build, n_permutations=10 ** 9)
    with pytest.raises(ValueError, match=r"n_permutations=100000000 .*GiB"):
        run(build=build, n_permutations=10 ** 8, null="conditional")
    assert time.monotonic() - t0 < 10 and len(calls) <= 4                       # only the checking builds


@two_cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_loky_worker_outlives_a_killed_run(tmp_path):
    script = textwrap.dedent("""
        from nn_from_scratch.analysis import permutation as pt
        from permutation_helpers import FIT, make_data, slow_build_mlp
        X, y = make_data()
        pt.permutation_test(slow_build_mlp, X, y, FIT, n_permutations=50, output="output", progress=False,
                            n_jobs=2, backend="loky", seed=1)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), PERM_TEST_SLEEP="0.5")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        kids = []
        while time.monotonic() < deadline and proc.poll() is None:
            kids = [p for p, s in _children(proc.pid) if s != "Z"]
            if len(kids) >= 2:                         # two workers
                break
            time.sleep(0.1)
        assert proc.poll() is None and len(kids) >= 2, kids
        time.sleep(1.0)
        kids = [p for p, s in _children(proc.pid, trackers=True) if s != "Z"]      # the trackers too
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and any(_alive(p) for p in kids):
            time.sleep(0.1)
        gone_after = time.monotonic() - t0
        assert not [p for p in kids if _alive(p)], f"still alive {gone_after:.1f} s after kill -9: {kids}"
        assert gone_after < 5
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ callbacks in fit_kwargs
def early_fit():
    return {"epochs": 20, "batch_size": 60, "callbacks": [EarlyStopping(monitor="loss", min_delta=0.05, patience=1)]}


@pytest.fixture(scope="module")
def early_reference():
    return run(fit=early_fit(), backend="sequential")


def test_early_stopping_matters_here(reference, early_reference):
    assert early_reference.null_distribution.tobytes() != reference.null_distribution.tobytes()


@pytest.mark.parametrize("n_jobs,backend", [(2, "threading"), (2, "loky")])
def test_a_shared_callback_gives_the_sequential_result(early_reference, n_jobs, backend):
    fit = early_fit()
    for _ in range(2):                                   # and the same from run to run
        assert_same(run(fit=fit, n_jobs=n_jobs, backend=backend), early_reference)
    cb = fit["callbacks"][0]
    assert cb.network is None and cb.wait == 0 and cb.best is None     # the user's object was never trained with


def schedule(epoch, lr):
    return lr


def test_callbacks_are_copied_from_their_configuration():
    class Configured(Callback):
        def __init__(self, k):
            self.k, self.calls = k, []

        def get_config(self):
            return {"k": self.k}

    cbs = [EarlyStopping(monitor="loss", patience=3, min_delta=0.01, restore_best_weights=True),
           ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2), LearningRateScheduler(schedule),
           TerminateOnNaN(), Configured(7)]
    fresh = recipe.fresh_fit_kwargs({"epochs": 2, "callbacks": cbs})["callbacks"]
    for a, b in zip(cbs, fresh):
        assert type(a) is type(b) and a is not b
        assert recipe.describe(a) == recipe.describe(b)
    assert fresh[0].patience == 3 and fresh[0].restore_best_weights and fresh[4].k == 7 and fresh[4].calls == []
    assert fresh[2].schedule is schedule
    text = json.dumps(recipe.describe_kwargs({"callbacks": cbs}))
    assert "0x" not in text and "callable:test_permutation_reliability.schedule" in text
    assert "patience=3" in text and "Configured(k=7)" in text


@pytest.mark.parametrize("cb,match", [
    (lambda p: ModelCheckpoint(str(p / "m.npz")), "ModelCheckpoint cannot be used.*same file"),
    (lambda p: CSVLogger(str(p / "log.csv")), "CSVLogger cannot be used.*same file"),
    (lambda p: LambdaCallback(on_epoch_end=lambda e, logs: None), "LambdaCallback cannot be used"),
    (lambda p: type("Custom", (Callback,), {})(), "Custom has no configuration.*get_config"),
])
def test_callbacks_without_a_copy_are_refused(tmp_path, cb, match):
    calls = []

    def build(seed):
        calls.append(seed)
        return build_mlp(seed)
    fit = {"epochs": 2, "batch_size": 60, "callbacks": [TerminateOnNaN(), cb(tmp_path)]}
    with pytest.raises(ValueError, match=r"fit_kwargs\['callbacks'\]\[1\]: " + match):
        run(fit=fit, build=build)
    assert calls == []                                 # refused before anything was built


def test_a_run_with_callbacks_resumes_and_another_configuration_is_refused(early_reference, tmp_path):
    d = tmp_path / "ckpt"
    assert_same(run(fit=early_fit(), checkpoint_dir=d), early_reference)
    again = run(fit=early_fit(), checkpoint_dir=d)                   # new callback objects, same configuration
    assert again.info["replicates_resumed"] == B + 1
    assert_same(again, early_reference)
    other = early_fit()
    other["callbacks"] = [EarlyStopping(monitor="loss", min_delta=0.05, patience=2)]
    with pytest.raises(pt.CheckpointError, match="another experiment.*fit_kwargs"):
        run(fit=other, checkpoint_dir=d)


def test_the_fingerprint_of_a_recipe_without_callbacks_is_unchanged():
    """Checkpoint directories of earlier versions still resume: the same description as before."""
    X = np.arange(6.0).reshape(3, 2)
    got = recipe.describe_kwargs({"epochs": 3, "batch_size": 64, "shuffle": True, "validation_data": (X, X[:, 0]),
                                  "metrics": ["mae"], "class_weight": {0: 1.0, 1: 2.0}})
    assert got == {"batch_size": "64", "epochs": "3", "shuffle": "True", "metrics": "['mae']",
                   "class_weight": "{0: 1.0, 1: 2.0}",
                   "validation_data": ["array:" + ck.digest_array(X), "array:" + ck.digest_array(X[:, 0])]}


# ------------------------------------------------------------------ the checkpoint directory
def test_two_experiments_started_together_never_share_a_directory(tmp_path):
    fa, fb = {"experiment": "a"}, {"experiment": "b"}
    for trial in range(30):
        d = tmp_path / f"d{trial}"
        barrier, outcome = threading.Barrier(2), {}

        def open_it(name, fp):
            barrier.wait()
            try:
                ck.Checkpoints(d, fp)
                outcome[name] = "ok"
            except pt.CheckpointError as exc:
                outcome[name] = str(exc)
        threads = [threading.Thread(target=open_it, args=a) for a in (("a", fa), ("b", fb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winner = [k for k, v in outcome.items() if v == "ok"]
        assert len(winner) == 1, outcome
        loser = "b" if winner == ["a"] else "a"
        assert "another experiment (it differs in: experiment)" in outcome[loser]
        with open(d / "experiment.json") as f:
            assert json.load(f) == {"a": fa, "b": fb}[winner[0]]
        assert sorted(os.listdir(d)) == ["experiment.json"]          # no temporary file left


def test_dead_temporary_files_beside_complete_replicates_are_removed(reference, tmp_path):
    d = tmp_path / "ckpt"
    run(checkpoint_dir=d)
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = d / f".replicate-b000001.npz.{host}-{dead.pid}-0a1b2c3d4e5f.nnfs-tmp"
    live = d / f".replicate-b000002.npz.{host}-{os.getpid()}-0a1b2c3d4e5f.nnfs-tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    again = run(checkpoint_dir=d)
    assert again.info["replicates_resumed"] == B + 1
    assert not stale.exists() and live.exists()          # a running writer's file is left alone


def test_replicate_files_of_the_earlier_format_resume(reference, tmp_path):
    """Files written before replicates carried the ``diverged`` mark still load."""
    d = tmp_path / "ckpt"
    run(checkpoint_dir=d)
    for name in os.listdir(d):
        if name.startswith("replicate-"):
            with np.load(d / name) as f:
                arrays = {k: f[k] for k in ("statistic", "experiment", "init_digest")}
            np.savez(d / name, **arrays)
    again = run(checkpoint_dir=d)
    assert again.info["replicates_resumed"] == B + 1
    assert_same(again, reference)


def test_a_checkpoint_holding_nan_is_recomputed(reference, tmp_path):
    d = tmp_path / "ckpt"
    run(checkpoint_dir=d)
    victim = d / "replicate-b000004.npz"
    with np.load(victim) as f:
        arrays = {k: f[k] for k in f.files if k != "diverged"}
    arrays["statistic"] = np.full_like(arrays["statistic"], np.nan)
    np.savez(victim, **arrays)
    with pytest.warns(RuntimeWarning, match="replicate-b000004.npz.*non-finite.*recomputing"):
        again = run(checkpoint_dir=d)
    assert again.info["replicates_resumed"] == B
    assert_same(again, reference)
    with np.load(victim) as f:
        assert np.isfinite(f["statistic"]).all() and not bool(f["diverged"])


def test_diverged_null_replicates_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PERM_DIVERGE_SEED", str(build_seed(2)))
    d = tmp_path / "ckpt"
    with pytest.warns(TrainingWarning, match=r"1 null replicate\(s\) diverged in training.*: b000002;"):
        res = run(build=diverging_build_mlp, checkpoint_dir=d)
    assert res.info["diverged_replicates"] == ["b000002"]
    with pytest.warns(TrainingWarning, match=r"b000002"):          # kept as the true result, named again
        again = run(build=diverging_build_mlp, checkpoint_dir=d)
    assert again.info["replicates_resumed"] == B + 1
    np.testing.assert_array_equal(again.null_distribution, res.null_distribution)


def test_diverged_replicates_in_the_conditional_test_are_named(monkeypatch):
    monkeypatch.setenv("PERM_DIVERGE_SEED", str(pt.replicate_seeds(SEED, (1, 0))[0]))
    with pytest.warns(TrainingWarning, match=r"1 null replicate\(s\) diverged.*g000000-b000001"):
        res = run(build=diverging_build_mlp, null="conditional", n_permutations=3, sequential=2)
    assert res.info["diverged_replicates"] == ["g000000-b000001"]


def test_a_diverged_observed_network_is_named(monkeypatch):
    monkeypatch.setenv("PERM_DIVERGE_SEED", str(build_seed(0)))
    with pytest.warns(TrainingWarning, match="the observed network's training diverged"):
        res = run(build=diverging_build_mlp, n_permutations=2)
    assert res.info["diverged_replicates"] == ["b000000"]
