"""The split's workers can never inherit a lock another thread holds (engine/parallel/server.py).

Workers are forked from this process only while it runs no other thread; otherwise the clean fork
server starts them from the network's recipe (``rebuild.py``), and a network it cannot rebuild (a
user's layer class) splits over threads or runs whole.  References: the same training run with
``workers=1`` (float64), and hang counts of fresh processes under a timeout.  benchmarks/RESULTS.md
has the 100-run counts (``benchmarks/split_hang_stress.py``).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.engine import parallel
from nn_from_scratch.engine.parallel import allowed, rebuild

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server: Linux (memfd, SCM_RIGHTS)")


def cnn(workers, seed=0, layer=None):
    layers = [nf.Conv2D(1, 4, 3, seed=seed), layer or nf.ReLU(), nf.MaxPool(pool_size=2), nf.Flatten(),
              nf.Dropout(0.2, seed=seed + 2), nf.Linear(100, 10, seed=seed + 1)]
    return nf.NeuralNetwork(layers, nf.SoftMaxLoss(), optimizer=nf.Adam(1e-2), workers=workers).astype(np.float64)


def data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 12, 12)), rng.integers(0, 10, n)


@pytest.fixture
def other_thread(monkeypatch):
    """A daemon thread of the user's is alive (waiting, not in BLAS): workers may not be forked here."""
    monkeypatch.setattr(parallel, "SPLIT_WITH", "processes")
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 10)
    monkeypatch.setattr(parallel, "MIN_SHARD", 10)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    if not parallel.split_allowed():
        stop.set()
        pytest.skip("another non-daemon thread is alive: splits are off here (as designed)")
    assert not allowed.alone()
    yield
    stop.set()
    t.join()


def assert_same_training(net, ref, X, y, epochs=2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nf.TrainingWarning)
        loss = net.fit(X, y, epochs=epochs, batch_size=60, seed=0, verbose=0).history["loss"]
        ref_loss = ref.fit(X, y, epochs=epochs, batch_size=60, seed=0, verbose=0).history["loss"]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=0)
    for a, b in zip(net.layers, ref.layers):
        for name in a.params:
            np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(net.predict(X), ref.predict(X), rtol=1e-10, atol=1e-13)


@LINUX
def test_with_another_thread_the_workers_come_from_the_clean_server_and_agree(other_thread):
    X, y = data()
    net = cnn("auto")
    assert_same_training(net, cnn(1), X, y)
    split = net.batch_split.current
    assert split is not None and split.kind == "processes" and split.launch == "server"
    server_pid = split.server.proc.pid
    pids = list(split.pids)
    assert pids and all(os.path.exists(f"/proc/{p}") for p in pids)
    # the workers are the server's children, not this process's
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == server_pid
    net.stop_workers()
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids), "stop_workers left the server's workers"


@LINUX
def test_alone_the_workers_are_forked_from_this_process(monkeypatch):
    monkeypatch.setattr(parallel, "SPLIT_WITH", "processes")
    monkeypatch.setattr(parallel, "MIN_SHARD_PROCESSES", 10)
    if not allowed.alone():
        pytest.skip("this test process runs other threads")
    X, y = data()
    net = cnn("auto")
    assert_same_training(net, cnn(1), X, y, epochs=1)
    assert net.batch_split.current.launch == "fork"
    net.stop_workers()


@LINUX
def test_a_users_layer_class_splits_over_threads_never_forks(other_thread):
    class Doubling(nf.ReLU):                         # defined here, not importable by the server
        per_sample = True

    net = cnn("auto", layer=Doubling())
    assert rebuild.recipe(net) is None
    X, y = data()
    assert_same_training(net, cnn(1, layer=Doubling()), X, y)
    assert net.batch_split.current.kind == "threads"
    net.stop_workers()


def test_recipe_rebuilds_the_layers_with_their_changed_settings():
    net = cnn(1)
    net.layers[0].trainable = False
    spec = json.loads(json.dumps(rebuild.recipe(net)))          # as the server's worker reads it
    layers, loss = rebuild.build(spec)
    assert [type(a) for a in layers] == [type(b) for b in net.layers] and type(loss) is type(net.loss_fn)
    assert layers[0].trainable is False and layers[4].rate == net.layers[4].rate
    for a, b in zip(layers, net.layers):
        assert {k: v for k, v in vars(a).items() if k[0] != "_"}.keys() == \
            {k: v for k, v in vars(b).items() if k[0] != "_"}.keys()
    net.layers[4].custom = object()                              # a setting no text can carry
    assert rebuild.recipe(net) is None


@LINUX
def test_a_stopped_server_worker_is_killed_and_the_step_recomputed(other_thread, monkeypatch):
    monkeypatch.setattr(parallel, "WAIT_MIN_S", 0.5)
    monkeypatch.setattr(parallel, "WAIT_FACTOR", 1.0)
    X, y = data(60)
    net, ref = cnn(2), cnn(1)
    net.train_step(X, y)
    ref.train_step(X, y)
    (pid,) = net.batch_split.current.pids
    os.kill(pid, signal.SIGSTOP)
    with pytest.warns(RuntimeWarning, match=r"split over 2 processes failed \(WorkerTimeout"):
        loss, out = net.train_step(X, y)
    loss1, out1 = ref.train_step(X, y)
    np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-13)
    np.testing.assert_allclose(out, out1, rtol=1e-12, atol=1e-14)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}"), "the stopped worker was not killed and reaped by the server"
    net.stop_workers()


@LINUX
def test_daemon_blas_sequences_never_hang_small_seeded_run():
    """The daemon-BLAS sequence (a daemon thread in ``np.linalg.svd`` while ``fit`` splits) and a user's
    class beside it, 3 fresh processes each under a timeout (benchmarks/RESULTS.md: 100 each)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "benchmarks/split_hang_stress.py", "--runs", "3", "--timeout", "90",
                           "--sequences", "daemon_blas,daemon_blas_bn,user_class", "--seed", "7"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for sequence in ("daemon_blas", "daemon_blas_bn", "user_class"):
        assert f"{sequence}: 3 runs" in proc.stdout and "0 hangs, 0 failures" in proc.stdout, proc.stdout


KERNEL_CELL = r"""
import json, os, threading, warnings
import numpy as np
import nn_from_scratch as nf
from nn_from_scratch.engine import parallel
warnings.simplefilter("ignore", nf.TrainingWarning)
parallel.MIN_SHARD_PROCESSES = 10
rng = np.random.default_rng(0)
X, y = rng.standard_normal((120, 1, 12, 12)), rng.integers(0, 10, 120)
def make(workers):
    layers = [nf.Conv2D(1, 4, 3, seed=0), nf.BatchNorm((None, 4, None, None)), nf.ReLU(), nf.MaxPool(pool_size=2),
              nf.Flatten(), nf.Dropout(0.2, seed=2), nf.Linear(100, 10, seed=1)]
    return nf.NeuralNetwork(layers, nf.SoftMaxLoss(), optimizer=nf.SGD(0.1), workers=workers).astype(np.float64)
net, ref = make(2), make(1)
loss = net.fit(X, y, epochs=2, batch_size=60, seed=0, verbose=0).history["loss"]
split = net.batch_split.current
report = {"kind": getattr(split, "kind", None), "launch": getattr(split, "launch", None),
          "shards": getattr(split, "shards", 1), "workers_alive": [os.path.exists(f"/proc/{p}") for p in split.pids],
          "other_threads": [t.name for t in threading.enumerate() if t is not threading.current_thread()],
          "loss": loss, "ref_loss": ref.fit(X, y, epochs=2, batch_size=60, seed=0, verbose=0).history["loss"],
          "weights_diff": max(float(np.max(np.abs(a.params[k] - b.params[k]))) for a, b in zip(net.layers, ref.layers)
                              for k in a.params),
          "moving_diff": float(np.max(np.abs(net.layers[1].moving_variance - ref.layers[1].moving_variance))),
          "predict_diff": float(np.max(np.abs(net.predict(X) - ref.predict(X))))}
net.stop_workers()
print("REPORT " + json.dumps(report))
"""


@LINUX
def test_a_jupyter_kernel_still_splits_and_agrees():
    """In a real ipykernel kernel (daemon threads always alive) the split still runs over worker
    processes, started by the clean server, with the one-worker run's numbers."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import importlib.util
    spec = importlib.util.spec_from_file_location("notebook_execute", os.path.join(ROOT, "notebooks", "execute.py"))
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    import nbclient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(KERNEL_CELL)])
    client = nbclient.NotebookClient(nb, km=execute.this_python_kernel(), timeout=300, kernel_name="python3")
    client.execute(env=execute.kernel_environment(fast=True))
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])
    assert report["other_threads"], "the kernel ran no other thread: the clean start was not exercised"
    assert (report["kind"], report["launch"], report["shards"]) == ("processes", "server", 2), report
    assert report["workers_alive"] == [True], report
    np.testing.assert_allclose(report["loss"], report["ref_loss"], rtol=1e-12, atol=0)
    assert report["weights_diff"] < 1e-12 and report["moving_diff"] < 1e-12 and report["predict_diff"] < 1e-12, report


@LINUX
def test_a_server_that_cannot_start_leaves_threads_or_whole_steps_with_one_warning(other_thread, monkeypatch):
    from nn_from_scratch.engine.parallel import server
    monkeypatch.setattr(server, "SERVER", None)
    monkeypatch.setattr(server, "FAILED", None)
    monkeypatch.setattr(server, "BOOT", "import sys; sys.exit(3)")      # a Python that cannot start it
    X, y = data()
    net = cnn("auto")
    with pytest.warns(RuntimeWarning, match="failed") as record:
        assert_same_training(net, cnn(1), X, y)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert not server.usable()
    assert net.batch_split.current is None or net.batch_split.current.kind == "threads"
    net.stop_workers()
