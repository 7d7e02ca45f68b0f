"""permutation_test's parallel, resumable retraining: bitwise reproducible whatever n_jobs and
backend (loky processes, threads, a real dask.distributed LocalCluster), checkpoints, a run
killed mid-way and resumed, a checkpoint directory of another experiment refused."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nn_from_scratch.analysis import permutation as pt
from permutation_helpers import FIT, assert_same, build_mlp, make_data, slow_build_mlp

B = 6
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def run(**kw):
    X, y = make_data()
    args = dict(n_permutations=B, output="output", progress=False, seed=11)
    args.update(kw)
    return pt.permutation_test(args.pop("build", build_mlp), X, y, FIT, **args)


@pytest.fixture(scope="module")
def reference():
    return run()


def test_reference_is_a_real_test(reference):
    assert reference.null_distribution.shape == (B, 3)
    assert len({row.tobytes() for row in reference.null_distribution}) == B       # B different null networks
    assert run(seed=12).statistic.tobytes() != reference.statistic.tobytes()       # the seed matters


@pytest.mark.parametrize("n_jobs,backend", [(2, "loky"), (2, "threading"), (1, "sequential")])
def test_bitwise_reproducible_whatever_n_jobs_and_backend(reference, n_jobs, backend):
    import threading
    assert_same(run(n_jobs=n_jobs, backend=backend), reference)
    # no pool thread left behind (it would stop fit's split steps in this process: parallel.split_allowed)
    assert [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()] == []


def test_bitwise_reproducible_on_a_dask_local_cluster(reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        t0 = time.monotonic()
        with distributed.get_task_stream(client) as stream:
            res = run(n_jobs=2, backend="dask")
        assert time.monotonic() - t0 < 60
        assert len(stream.data) >= 1                     # the replicates ran as tasks on the cluster
    assert_same(res, reference)


def test_checkpoints_resume_and_refuse_another_experiment(reference, tmp_path):
    d = tmp_path / "ckpt"
    first = run(checkpoint_dir=d)
    assert_same(first, reference)
    files = sorted(f for f in os.listdir(d) if f.startswith("replicate-"))
    assert len(files) == B + 1 and "experiment.json" in os.listdir(d)
    again = run(checkpoint_dir=d)
    assert again.info["replicates_resumed"] == B + 1
    assert_same(again, reference)
    more = run(checkpoint_dir=d, n_permutations=B + 2)               # extends: only the 2 new ones run
    assert more.info["replicates_resumed"] == B + 1
    np.testing.assert_array_equal(more.null_distribution[:B], reference.null_distribution)
    with pytest.raises(pt.CheckpointError, match="another experiment.*seed"):
        run(checkpoint_dir=d, seed=12)
    with pytest.raises(pt.CheckpointError, match="another experiment.*fit_kwargs"):
        X, y = make_data()
        pt.permutation_test(build_mlp, X, y, {"epochs": 21, "batch_size": 60}, n_permutations=B,
                            output="output", progress=False, seed=11, checkpoint_dir=d)
    with pytest.raises(pt.CheckpointError, match="another experiment.*X"):
        X, y = make_data()
        pt.permutation_test(build_mlp, X * 2, y, FIT, n_permutations=B, output="output", progress=False,
                            seed=11, checkpoint_dir=d)


def test_damaged_checkpoint_file_is_named(tmp_path):
    d = tmp_path / "ckpt"
    run(checkpoint_dir=d, n_permutations=2)
    victim = d / "replicate-b000001.npz"
    victim.write_bytes(victim.read_bytes()[:50])
    with pytest.raises(pt.CheckpointError, match="replicate-b000001.npz.*damaged"):
        run(checkpoint_dir=d, n_permutations=2)


def test_resume_after_a_killed_run_equals_an_uninterrupted_run(tmp_path):
    n_perm = 12
    d = tmp_path / "ckpt"
    script = textwrap.dedent(f"""
        from nn_from_scratch.analysis import permutation as pt
        from permutation_helpers import FIT, make_data, slow_build_mlp
        X, y = make_data()
        pt.permutation_test(slow_build_mlp, X, y, FIT, n_permutations={n_perm}, output="output",
                            progress=False, seed=11, checkpoint_dir={str(d)!r})
        print("FINISHED")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), PERM_TEST_SLEEP="0.15")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            done = [f for f in os.listdir(d) if f.startswith("replicate-")] if d.exists() else []
            if len(done) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = [f for f in os.listdir(d) if f.startswith("replicate-")]
    assert 3 <= len(done) < n_perm + 1                               # killed part-way
    resumed = run(checkpoint_dir=d, n_permutations=n_perm, build=slow_build_mlp)
    assert resumed.info["replicates_resumed"] == len(done)
    assert_same(resumed, run(n_permutations=n_perm))                 # = uninterrupted, no checkpoints


def test_replicates_train_on_one_blas_thread_without_split_step_workers(capsys):
    from threadpoolctl import threadpool_info
    seen = []

    def build(seed):
        seen.append(max([p["num_threads"] for p in threadpool_info()] or [1]))
        return build_mlp(seed)
    run(build=build, n_permutations=2, progress=True)
    assert len(seen) == 2 + 3 and set(seen[2:]) == {1}     # the 2 checking builds, then 3 trained ones
    err = capsys.readouterr().err
    assert "permutation test" in err and "3/3" in err                       # the tqdm bar counts networks
    X, y = make_data()
    net, _ = pt.train_replicate(build_mlp, X, y, FIT, seed=0, key=1)
    assert net.workers == 1 and net._sharded is None                        # no forked split-step workers


# ------------------------------------------------------------------ the conditional test
def run_conditional(**kw):
    X, y = make_data()
    args = dict(n_permutations=4, output="output", progress=False, seed=11, null="conditional")
    args.update(kw)
    return pt.permutation_test(args.pop("build", build_mlp), X, y, FIT, **args)


@pytest.fixture(scope="module")
def conditional_reference():
    return run_conditional(), run_conditional(sequential=1)


@pytest.mark.parametrize("n_jobs,backend", [(2, "loky"), (2, "threading"), (1, "sequential")])
def test_conditional_bitwise_reproducible_whatever_n_jobs_and_backend(conditional_reference, n_jobs, backend):
    full, seq = conditional_reference
    assert_same(run_conditional(n_jobs=n_jobs, backend=backend), full)
    other = run_conditional(n_jobs=n_jobs, backend=backend, sequential=1)      # other round sizes, same answer
    assert_same(other, seq)
    assert seq.fits_per_group().tolist() == other.fits_per_group().tolist()


def test_conditional_on_a_dask_local_cluster(conditional_reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl):
        res = run_conditional(n_jobs=2, backend="dask")
    assert_same(res, conditional_reference[0])


def test_conditional_checkpoints_resume_and_refuse_other_groups(conditional_reference, tmp_path):
    d = tmp_path / "ckpt"
    first = run_conditional(checkpoint_dir=d)
    assert_same(first, conditional_reference[0])
    names = sorted(f for f in os.listdir(d) if f.startswith("replicate-"))
    assert len(names) == 1 + 3 * 4 and "replicate-g000002-b000004.npz" in names
    again = run_conditional(checkpoint_dir=d)
    assert again.info["replicates_resumed"] == 1 + 3 * 4
    assert_same(again, first)
    with pytest.raises(pt.CheckpointError, match="another experiment.*groups"):
        run_conditional(checkpoint_dir=d, groups=np.array([0, 0, 1]))
    with pytest.raises(pt.CheckpointError, match="another experiment.*sampler"):
        run_conditional(checkpoint_dir=d, sampler="marginal")
