"""plotting: the curves show the given numbers, files are written atomically, no display needed."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nn_from_scratch import backend  # noqa: E402
from nn_from_scratch.training.network import History  # noqa: E402
from nn_from_scratch.plotting import plot_filters, plot_history, save_figure, show_images  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HIST = {"loss": [2.0, 1.0, 0.5], "accuracy": [0.3, 0.7, 0.9],
        "val_loss": [2.2, 1.3, 0.9], "val_accuracy": [0.25, 0.6, 0.8]}


def _lines(ax):
    return {line.get_label(): line.get_ydata() for line in ax.get_lines()}


def _read_png(path):
    import matplotlib.image as mpimg
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    return mpimg.imread(path)


def test_plot_history_draws_the_given_numbers(tmp_path):
    h = History()
    for e in range(3):
        h._log(e + 1, **{k: v[e] for k, v in HIST.items()})
    path = tmp_path / "curves.png"
    fig = plot_history(h, path, title="demo")
    loss_ax, acc_ax = fig.axes
    loss, acc = _lines(loss_ax), _lines(acc_ax)
    np.testing.assert_allclose(loss["train"], HIST["loss"])
    np.testing.assert_allclose(loss["held-out"], HIST["val_loss"])
    np.testing.assert_allclose(acc["train"], HIST["accuracy"])
    np.testing.assert_allclose(acc["held-out"], HIST["val_accuracy"])
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_xdata(), [1, 2, 3])       # epochs count from 1
    assert "80.00%" in acc_ax.get_title()
    img = _read_png(path)
    assert img.shape[0] > 200 and img.shape[1] > 400
    assert os.listdir(tmp_path) == ["curves.png"]                                   # no temporary left


def test_plot_history_loss_only_and_dict_input(tmp_path):
    fig = plot_history({"loss": [3.0, 2.0]})
    assert len(fig.axes) == 1
    np.testing.assert_allclose(_lines(fig.axes[0])["train"], [3.0, 2.0])
    with pytest.raises(ValueError, match="no 'loss' values"):
        plot_history({"accuracy": [0.5]})
    with pytest.raises(TypeError, match="History or a dict"):
        plot_history([1.0, 2.0])


class FakeDeviceScalar:
    """Stands in for a 0-d device array: converts to float only through __float__."""

    def __init__(self, v):
        self.v = v

    def __float__(self):
        return float(self.v)


def test_plot_history_accepts_array_scalars(tmp_path):
    h = {"loss": [np.float32(1.5), np.array(0.5)], "val_loss": [FakeDeviceScalar(2.0), FakeDeviceScalar(1.0)]}
    fig = plot_history(h, tmp_path / "a.png")
    lines = _lines(fig.axes[0])
    np.testing.assert_allclose(lines["train"], [1.5, 0.5])
    np.testing.assert_allclose(lines["held-out"], [2.0, 1.0])


@pytest.mark.gpu
def test_plot_history_with_cupy_values(tmp_path):
    if not backend.cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    import cupy
    h = {"loss": [cupy.asarray(1.0).sum(), cupy.float32(0.25)]}
    fig = plot_history(h, tmp_path / "gpu.png")
    np.testing.assert_allclose(_lines(fig.axes[0])["train"], [1.0, 0.25])
    assert _read_png(tmp_path / "gpu.png").ndim == 3


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "curves.png"
    target.write_bytes(b"previous good file")
    fig = plot_history(HIST)

    def broken_savefig(f, **kw):
        f.write(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"previous good file"
    assert os.listdir(tmp_path) == ["curves.png"]


def test_saved_file_gets_normal_permissions(tmp_path):
    path = save_figure(plot_history(HIST), tmp_path / "sub" / "c.png")       # creates the folder too
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_headless_and_nothing_left_open(tmp_path):
    """No display, no MPLBACKEND: matplotlib falls back to Agg, the PNG is written, and the
    figures the functions return are not kept in pyplot's registry (a script that plots in a
    loop accumulates nothing) yet stay usable (drawn and saved after the call)."""
    code = (
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "from nn_from_scratch.plotting import plot_history, plot_filters, show_images\n"
        f"fig = plot_history({{'loss': [1.0, 0.5], 'val_loss': [1.2, 0.9]}}, {str(tmp_path / 'h.png')!r})\n"
        "show_images(np.zeros((3, 5, 5))); plot_filters(np.zeros((2, 1, 3, 3)))\n"
        "assert plt.get_fignums() == [], plt.get_fignums()\n"
        f"fig.savefig({str(tmp_path / 'again.png')!r})\n"
        "print('ok', plt.get_backend())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "ok agg"
    assert _read_png(tmp_path / "h.png").ndim == 3
    assert _read_png(tmp_path / "again.png").ndim == 3


def test_figures_are_made_by_pyplot():
    """Made by pyplot (so a Jupyter kernel's inline backend gives them its canvas and PNG
    display), then closed: not in the registry, but with a canvas that draws."""
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    fig = plot_history(HIST)
    assert plt.get_fignums() == before
    assert fig.canvas is not None and fig.canvas.figure is fig
    fig.canvas.draw()                                       # still drawable after being detached
    assert fig.get_layout_engine() is not None              # constrained layout kept


def test_show_images_grid_titles_and_data():
    rng = np.random.default_rng(0)
    images = rng.random((5, 1, 28, 28))
    fig = show_images(images, labels=np.array([1, 2, 3, 4, 5]), predictions=np.array([1, 2, 0, 4, 5]), ncols=3)
    axes = fig.axes
    assert len(axes) == 6                                   # 2 rows x 3 columns, last one empty
    shown = [ax for ax in axes if ax.get_images()]
    assert len(shown) == 5
    np.testing.assert_allclose(shown[2].get_images()[0].get_array(), images[2, 0])
    assert shown[2].get_title() == "3 / pred 0"
    assert shown[2].title.get_color() == "red" and shown[1].title.get_color() == "black"
    # one image (H, W) and (N, H, W) work; symmetric colour scale for gradients
    g = rng.standard_normal((2, 28, 28))
    fig = show_images(g, symmetric=True, cmap="RdBu_r")
    lo, hi = fig.axes[0].get_images()[0].get_clim()
    assert lo == -hi == -np.abs(g[0]).max()
    assert len(show_images(g[0]).axes) == 1
    with pytest.raises(ValueError, match=r"\(N, H, W\).*received \(2, 3, 28, 28\)"):
        show_images(np.zeros((2, 3, 28, 28)))


def test_plot_filters_layout_and_values(tmp_path):
    w = np.random.default_rng(1).standard_normal((2, 4, 7, 7))
    fig = plot_filters(w, title="conv7x7", path=tmp_path / "f.png")
    assert len(fig.axes) == 8
    # row-major: filter i, input channel j is axes[i * 4 + j]
    np.testing.assert_allclose(fig.axes[1 * 4 + 2].get_images()[0].get_array(), w[1, 2])
    assert fig.axes[0].get_ylabel() == "filter 0" and fig.axes[3].get_title() == "in 3"
    assert _read_png(tmp_path / "f.png").ndim == 3
    with pytest.raises(ValueError, match=r"\(F, C, kh, kw\), received shape \(4, 7, 7\)"):
        plot_filters(w[0])
