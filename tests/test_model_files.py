"""Issue 22, items 5, 6 and 8: hostile or damaged model files are refused before anything is
allocated; weights are float16/32/64 only; interrupted saves leave nothing behind for long;
re-saving keeps permissions; saving through a symbolic link; errors name the path asked for.

The references are the files themselves (built here byte by byte where they lie) and
``tracemalloc`` (NumPy reports its allocations to it) for "nothing was allocated".
"""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import nn_from_scratch as nf
from nn_from_scratch.training import serialization
from nn_from_scratch.training.serialization import ModelFileError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_net():
    return nf.NeuralNetwork([nf.Linear(20, 20, seed=0, name="fc")], loss_fn=nf.SoftMaxLoss(), optimizer=nf.SGD(0.1))


def members(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def npy_bytes(array=None, shape=None, dtype=None):
    """An .npy member: ``array``'s, or only a header declaring ``shape``/``dtype`` (no data)."""
    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                   "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def write_zip(path, parts, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in parts.items():
            zf.writestr(name + ".npy", data)
    return str(path)


def with_config(path, out, edit=None, arrays=None):
    """A copy of model file ``path`` with its architecture record edited and arrays replaced."""
    parts = {k: npy_bytes(v) for k, v in members(path).items()}
    if edit is not None:
        config = json.loads(str(members(path)["__config__"]))
        edit(config)
        parts["__config__"] = npy_bytes(np.array(json.dumps(config)))
    for k, v in (arrays or {}).items():
        parts[k] = v if isinstance(v, bytes) else npy_bytes(v)
    return write_zip(out, parts)


def refused(path, *needles):
    tracemalloc.start()
    try:
        for loader in (small_net().load, nf.NeuralNetwork.load):
            with pytest.raises(ModelFileError) as err:
                loader(path)
            msg = str(err.value)
            assert os.path.basename(path) in msg, msg
            for needle in needles:
                assert needle in msg, msg
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20, f"{peak / 2**20:.1f} MB allocated before the refusal"
    return msg


def test_a_small_file_declaring_a_huge_layer_is_refused_before_allocating(tmp_path):
    """The issue's 3,950-byte file: ``Linear(20000, 20000)`` in the record, the weights of
    ``Linear(20, 20)`` inside (before: 7.7 GB and a ShapeError)."""
    good = small_net().save(str(tmp_path / "good.npz"))

    def huge(config):
        config["layers"][0]["config"].update(input_shape=[None, 20000], output_shape=[None, 20000])
    path = with_config(good, tmp_path / "hostile.npz", huge)
    assert os.path.getsize(path) < 5000                     # ~4 KB
    refused(path, "(20001, 20000)", "(21, 20)")


def test_a_header_declaring_more_than_the_file_holds_is_refused(tmp_path):
    """``Linear(10**6, 10**6)`` with a matching 7.3 TiB header and no data behind it."""
    good = small_net().save(str(tmp_path / "good.npz"))

    def huge(config):
        config["layers"][0]["config"].update(input_shape=[None, 10 ** 6], output_shape=[None, 10 ** 6])
    path = with_config(good, tmp_path / "liar.npz", huge,
                       {"layer0/W": npy_bytes(shape=(10 ** 6 + 1, 10 ** 6), dtype=np.float32)})
    refused(path, "layer0/W", "float32(1000001, 1000000)")


def test_a_zip_bomb_is_refused(tmp_path):
    good = small_net().save(str(tmp_path / "good.npz"))
    parts = {k: npy_bytes(v) for k, v in members(good).items()}
    parts["extra"] = npy_bytes(np.zeros(4 << 20, dtype=np.float32))     # 16 MB of zeros deflate ~1000x
    path = write_zip(tmp_path / "bomb.npz", parts, compression=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 100_000
    refused(path, "extra", "MAX_COMPRESSION_RATIO")


@pytest.mark.parametrize("value,dtype", [(np.arange(420).reshape(21, 20), "int64"),
                                         (np.full((21, 20), "w"), "<U1"),
                                         (np.ones((21, 20), dtype=np.complex64), "complex64"),
                                         (np.ones((21, 20), dtype=bool), "bool")])
def test_weights_other_than_float16_32_64_are_refused(tmp_path, value, dtype):
    """Before: int64 weights made the network truncate every input to an integer."""
    good = small_net().save(str(tmp_path / "good.npz"))
    path = with_config(good, tmp_path / "typed.npz", arrays={"layer0/W": value})
    refused(path, "layer0/W", dtype, "float16, float32 or float64")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float16_32_64_weights_load_bitwise(tmp_path, dtype):
    net = small_net()
    W = np.random.default_rng(0).standard_normal((21, 20)).astype(dtype)
    path = with_config(net.save(str(tmp_path / "good.npz")), tmp_path / "w.npz", arrays={"layer0/W": W})
    loaded = nf.NeuralNetwork.load(path)
    assert loaded.layers[0].W.dtype == dtype and np.array_equal(loaded.layers[0].W, W)


def test_object_arrays_and_unknown_members_are_refused(tmp_path):
    good = small_net().save(str(tmp_path / "good.npz"))
    parts = {k: npy_bytes(v) for k, v in members(good).items()}
    obj = io.BytesIO()
    np.lib.format.write_array(obj, np.array([None, 1], dtype=object), allow_pickle=True)
    refused(write_zip(tmp_path / "obj.npz", dict(parts, extra=obj.getvalue())), "Python objects")
    refused(write_zip(tmp_path / "orphan.npz", dict(parts, **{"layer7/W": npy_bytes(np.ones(3))})),
            "layer7/W", "no layer")
    with zipfile.ZipFile(good) as zf, zipfile.ZipFile(tmp_path / "txt.npz", "w") as out:
        for info in zf.infolist():
            out.writestr(info.filename, zf.read(info))
        out.writestr("notes.txt", b"hello")
    refused(str(tmp_path / "txt.npz"), "notes.txt")


def test_damaged_architecture_records_are_refused(tmp_path):
    good = small_net().save(str(tmp_path / "good.npz"))
    cases = {"nolayers": lambda c: c.pop("layers"),
             "badentry": lambda c: c["layers"].__setitem__(0, 5),
             "unknown": lambda c: c["layers"][0].__setitem__("class", "Teleporter"),
             "negative": lambda c: c["layers"][0]["config"].update(output_shape=[None, -3]),
             "fraction": lambda c: c["layers"][0]["config"].update(input_shape=[None, 2.5])}
    for name, edit in cases.items():
        refused(with_config(good, tmp_path / f"{name}.npz", edit), "architecture record" if name != "unknown"
                else "Teleporter")


# --------------------------------------------------------------------------- saving
def tmp_files(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".nnfs-tmp") or n.startswith(".tmp-"))


def test_leftovers_of_dead_saves_are_removed_and_live_ones_kept(tmp_path):
    net = small_net()
    host = serialization._host()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = {f".m.npz.{host}-{dead}-abcdef.nnfs-tmp": False,       # a killed save of this target: removed
             f".m.npz.{host}-{os.getpid()}-abcdef.nnfs-tmp": True,  # a save in progress (alive): kept
             f".m.npz.otherhost-{dead}-abcdef.nnfs-tmp": True,     # another machine's (shared disk): kept
             f".other.npz.{host}-{dead}-abcdef.nnfs-tmp": True,    # another target's: its own save cleans it
             ".tmp-abcd1234.npz": False,                           # an earlier version's, over an hour old
             ".tmp-wxyz9876.npz": True}                            # ... and a recent one
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 100)
    old = time.time() - 7200
    os.utime(tmp_path / ".tmp-abcd1234.npz", (old, old))
    net.save(str(tmp_path / "m.npz"))
    assert tmp_files(tmp_path) == sorted(n for n, keep in names.items() if keep)


def test_kill_9_during_saves_leaves_nothing_after_the_next_save(tmp_path):
    """Three saves of a 40 MB model killed half-way (benchmarks/RESULTS.md: 20 kills)."""
    script = ("import sys, numpy as np, nn_from_scratch as nf\n"
              "net = nf.NeuralNetwork([nf.Linear(3000, 3000, seed=0)])\n"
              "print('ready', flush=True)\n"
              "while True:\n    net.save(sys.argv[1])\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    target = str(tmp_path / "big.npz")
    killed = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, target], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(500):                    # kill it while a temporary file exists
            if tmp_files(tmp_path):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        killed += bool(tmp_files(tmp_path))
    assert killed >= 1                          # the test saw at least one save interrupted
    small_net().save(target)
    assert tmp_files(tmp_path) == []
    assert nf.NeuralNetwork.load(target).layers[0].W.shape == (21, 20)


def test_resaving_keeps_the_files_permissions(tmp_path):
    path = str(tmp_path / "m.npz")
    net = small_net()
    net.save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o600)
    net.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.chmod(path, 0o640)
    net.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_saving_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "model-1.npz"
    link = tmp_path / "latest.npz"
    a, b = small_net(), nf.NeuralNetwork([nf.Linear(20, 20, seed=5)])
    a.save(str(real))
    os.symlink(real, link)
    b.save(str(link))
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert np.array_equal(nf.NeuralNetwork.load(str(real)).layers[0].W, b.layers[0].W)
    assert tmp_files(tmp_path) == [] and tmp_files(tmp_path / "runs") == []


def test_save_errors_name_the_path_asked_for(tmp_path):
    net = small_net()
    missing = str(tmp_path / "no-such-dir" / "m.npz")
    with pytest.raises(FileNotFoundError) as err:
        net.save(missing)
    assert missing in str(err.value) and ".nnfs-tmp" not in str(err.value)
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        net.save(str(tmp_path))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as err:
        net.save(str(tmp_path / "afile" / "m.npz"))
    assert "afile" in str(err.value) and ".nnfs-tmp" not in str(err.value)
