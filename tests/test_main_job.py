"""The main job (``python -m nn_from_scratch train``): accuracy, outputs, options, fallbacks.

The accuracy target, >= 92 % on the official MNIST test set after the default
10 epochs, is the project's goal for this network (Keras reaches 92.5-93.6 %
with the same recipe); see ``nn_from_scratch/train.py`` for the seeds measured.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from nn_from_scratch.data import datasets

from nn_from_scratch import backend, train
from nn_from_scratch.training.network import NeuralNetwork

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ACCURACY_LINE = re.compile(r"Test accuracy: (\d+\.\d+)% on ([\d,]+) images, (.*)")


def official_dir_or_skip():
    for path, _, _ in train.mnist_test_locations():
        if os.path.isdir(path) and any(n.startswith("t10k-images") for n in os.listdir(path)):
            return path
    pytest.skip("the official MNIST test set is not on this machine (see ../shared/data/mnist); "
                f"looked in {[p for p, _, _ in train.mnist_test_locations()]}")


def run_cli(args, env_extra=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "nn_from_scratch", "train"] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400


@pytest.mark.slow
def test_main_job_reaches_92_percent_on_the_official_test_set(tmp_path):
    test_dir = official_dir_or_skip()
    out = tmp_path / "out"
    model = tmp_path / "model.npz"
    res = run_cli(["--out", str(out), "--test-dir", test_dir, "--save", str(model)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = ACCURACY_LINE.search(res.stdout)
    assert m, res.stdout[-2000:]
    acc, n, which = float(m.group(1)), int(m.group(2).replace(",", "")), m.group(3)
    assert n == 10000 and which == "official MNIST test set"
    assert acc >= 92.0, f"accuracy {acc}% < 92%"
    assert re.search(r"Wall time: \d+\.\d s", res.stdout)
    assert f"Curves:  {out / 'training_curves.png'}" in res.stdout
    # the progress bar of NeuralNetwork.fit ran for each of the 10 epochs (tqdm writes to stderr)
    assert "Epoch 10/10" in res.stderr and "313/313" in res.stderr          # ceil(5000 / 16) batches
    check_png(out / "training_curves.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["official_test_set"] and summary["n_train"] == 5000 and summary["n_test"] == 10000
    assert len(summary["history"]["val_accuracy"]) == 10
    assert summary["settings"] == {"epochs": 10, "batch_size": 16, "optimizer": "adam", "lr": 0.001, "seed": 0,
                                   "backend": "numpy"}
    # the printed accuracy is real: recompute it from the saved model with a plain argmax
    from nn_from_scratch.data.datasets import load_mnist_idx
    X, y = load_mnist_idx(test_dir, "test")
    net = NeuralNetwork.load(str(model))
    recomputed = float((net.predict(X).argmax(axis=1) == y).mean())
    assert abs(100 * recomputed - acc) < 0.006
    assert abs(recomputed - summary["accuracy"]) < 1e-12


def test_cli_smoke_one_epoch_with_env_var(tmp_path):
    """--epochs 1, the test set found through NN_FROM_SCRATCH_MNIST_DIR (here: a small mnist.npz)."""
    from nn_from_scratch.data.datasets import load_mnist
    Xh, yh = load_mnist("test", normalize=False)          # 1,000 bundled digits as a stand-in test set
    np.savez(tmp_path / "mnist.npz", x_train=Xh[:1, 0], y_train=yh[:1], x_test=Xh[:, 0], y_test=yh)
    out = tmp_path / "o"
    res = run_cli(["--epochs", "1", "--out", str(out), "--optimizer", "sgd", "--quiet"],
                  env_extra={train.MNIST_DIR_ENV: str(tmp_path)}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = ACCURACY_LINE.search(res.stdout)
    assert m and m.group(2) == "1,000" and m.group(3) == "official MNIST test set"
    assert float(m.group(1)) > 50.0            # one epoch of SGD lr 0.05 on 5,000 digits: far above chance
    check_png(out / "training_curves.png")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["lr"] == 0.05 and summary["epochs_run"] == 1


def test_fallback_holds_out_bundled_digits_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "PROJECT_ROOT", str(tmp_path / "project"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(train.MNIST_DIR_ENV, raising=False)
    out = tmp_path / "out"
    code = train.main(["--epochs", "1", "--out", str(out), "--quiet", "--save", str(tmp_path / "m.npz")])
    text = capsys.readouterr().out
    assert code == 0
    assert "the official MNIST test set was not found" in text
    assert str(tmp_path / "shared" / "data" / "mnist") in text          # where it looked
    assert "NOT the official test set" in text
    m = ACCURACY_LINE.search(text)
    assert m and m.group(2) == "1,000"
    # the held-out digits are the bundled 'test' split, none of which was trained on
    from nn_from_scratch.data.datasets import load_mnist
    Xte, yte = load_mnist("test")
    net = NeuralNetwork.load(str(tmp_path / "m.npz"))
    assert abs(100 * float((net.predict(Xte).argmax(1) == yte).mean()) - float(m.group(1))) < 0.006
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 4000 and not summary["official_test_set"]


def test_bad_test_dir_is_an_error_not_a_silent_fallback(tmp_path, capsys):
    code = train.main(["--test-dir", str(tmp_path), "--epochs", "1", "--quiet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--test-dir points to '{tmp_path}'" in err and "t10k-images-idx3-ubyte" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [(["--epochs", "0"], "--epochs must be >= 1, received 0"),
                                           (["--batch-size", "-3"], "--batch-size must be >= 1, received -3"),
                                           (["--lr", "0"], "--lr must be > 0, received 0.0")])
def test_bad_options(args, message, capsys):
    assert train.main(args) == 2
    assert message in capsys.readouterr().err


def test_unknown_optimizer_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--optimizer", "adagrad"])
    assert e.value.code == 2
    assert "invalid choice: 'adagrad'" in capsys.readouterr().err


def test_cupy_backend_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    if backend.cupy_available():
        pytest.skip("CuPy and a GPU are available here")
    before = backend.current()
    try:
        code = train.main(["--backend", "cupy", "--epochs", "1", "--quiet", "--out", str(tmp_path)])
    finally:
        backend.use(before)
    assert code == 2
    assert "backend 'cupy' was requested but" in capsys.readouterr().err


@pytest.mark.gpu
def test_main_job_on_cupy(tmp_path):
    if not backend.cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    res = run_cli(["--backend", "cupy", "--epochs", "2", "--quiet", "--out", str(tmp_path)])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["backend"] == "cupy" and summary["accuracy"] > 0.8
    check_png(tmp_path / "training_curves.png")


def test_build_model_is_the_seed_labs_network():
    net = train.build_model()
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Convolution", "ReLU", "Convolution", "ReLU", "Vectorization", "Linear"]
    assert net.layers[0].W.shape == (4, 1, 3, 3) and not net.layers[0].use_bias
    assert net.layers[2].W.shape == (2, 4, 7, 7) and not net.layers[2].use_bias
    assert net.layers[5].W.shape == (801, 10)
    assert net.count_params() == 36 + 392 + 8010          # the lab's Keras summary: 8,438
    a, b = train.build_model(seed=3), train.build_model(seed=3)
    np.testing.assert_array_equal(a.layers[2].W, b.layers[2].W)
    assert not np.array_equal(a.layers[2].W, train.build_model(seed=4).layers[2].W)
