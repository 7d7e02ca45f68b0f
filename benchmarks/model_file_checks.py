"""Issue 22's model-file figures: hostile files refused before allocating, and kill -9 during saves.

1. The issue's ~4 KB hostile file (an architecture record declaring ``Linear(20000, 20000)``
   around the weights of ``Linear(20, 20)``) and its variants (a 7.3 TiB ``.npy`` header with no
   data behind it; a deflate bomb): ``NeuralNetwork.load`` of each, timed (best of 5) and its
   memory measured twice: the ``tracemalloc`` peak (NumPy's allocations included) and the
   process's peak RSS growth (``ru_maxrss``) in a fresh subprocess per file.
2. ``--kills`` (default 20) saves of a 36 MB model killed with SIGKILL while their temporary file
   exists, then one save: the temporary files left before and after it are counted.

    python benchmarks/model_file_checks.py [--kills 20]
"""
import argparse
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import nn_from_scratch as nf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def npy(array=None, shape=None, dtype=None):
    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                   "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def hostile_files(directory):
    good = os.path.join(directory, "good.npz")
    nf.NeuralNetwork([nf.Linear(20, 20, seed=0)]).save(good)
    with np.load(good) as data:
        members = {k: data[k] for k in data.files}
    config = json.loads(str(members["__config__"]))

    def write(name, edit=None, arrays=None, compression=zipfile.ZIP_STORED):
        cfg = json.loads(json.dumps(config))
        if edit:
            edit(cfg)
        parts = {k: npy(v) for k, v in members.items()}
        parts["__config__"] = npy(np.array(json.dumps(cfg)))
        parts.update(arrays or {})
        path = os.path.join(directory, name)
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for k, v in parts.items():
                zf.writestr(k + ".npy", v)
        return path

    def size(d, m):
        return lambda c: c["layers"][0]["config"].update(input_shape=[None, d], output_shape=[None, m])
    return {
        "Linear(20000, 20000) record, Linear(20, 20) weights": write("hostile.npz", size(20000, 20000)),
        "Linear(10**6, 10**6), 7.3 TiB header, no data": write("liar.npz", size(10 ** 6, 10 ** 6),
                                                              {"layer0/W": npy(shape=(10 ** 6 + 1, 10 ** 6),
                                                                               dtype=np.float32)}),
        "16 MB of zeros deflated to a few KB": write("bomb.npz", arrays={"extra": npy(np.zeros(4 << 20, np.float32))},
                                                     compression=zipfile.ZIP_DEFLATED),
    }


CHILD = """
import resource, sys, time
import nn_from_scratch as nf
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    nf.NeuralNetwork.load(sys.argv[1])
    print("LOADED")
except nf.ModelFileError as e:
    pass
print(time.perf_counter() - t, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def measure_hostile():
    with tempfile.TemporaryDirectory() as d:
        for what, path in hostile_files(d).items():
            times = []
            for _ in range(5):
                t = time.perf_counter()
                try:
                    nf.NeuralNetwork.load(path)
                    raise SystemExit(f"{what}: loaded!")
                except nf.ModelFileError as exc:
                    msg = str(exc)
                times.append(time.perf_counter() - t)
            tracemalloc.start()
            try:
                nf.NeuralNetwork.load(path)
            except nf.ModelFileError:
                pass
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            env = dict(os.environ, PYTHONPATH=ROOT)
            out = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, env=env,
                                 timeout=120).stdout.split()
            print(f"{what}: {os.path.getsize(path)} bytes; refused in {min(times) * 1e3:.1f} ms (best of 5; "
                  f"fresh process {float(out[-2]) * 1e3:.1f} ms), tracemalloc peak {peak / 2**20:.2f} MB, "
                  f"RSS growth {float(out[-1]):.1f} MB\n    {msg[:160]}")


def tmp_files(directory):
    return [n for n in os.listdir(directory) if n.endswith(".nnfs-tmp") or n.startswith(".tmp-")]


SAVER = ("import sys, nn_from_scratch as nf\n"
         "net = nf.NeuralNetwork([nf.Linear(3000, 3000, seed=0)])\n"
         "print('ready', flush=True)\n"
         "while True:\n    net.save(sys.argv[1])\n")


def measure_kills(kills):
    env = dict(os.environ, PYTHONPATH=ROOT)
    with tempfile.TemporaryDirectory() as d:
        target = os.path.join(d, "model.npz")
        hit = 0
        for _ in range(kills):
            proc = subprocess.Popen([sys.executable, "-c", SAVER, target], env=env, stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()
            for _ in range(2000):
                if tmp_files(d):
                    break
                time.sleep(0.002)
            time.sleep(np.random.default_rng(len(tmp_files(d)) + hit).uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc.stdout.close()
            hit += bool(tmp_files(d))
        left = tmp_files(d)
        size = sum(os.path.getsize(os.path.join(d, n)) for n in left)
        nf.NeuralNetwork([nf.Linear(3000, 3000, seed=1)]).save(target)
        after = tmp_files(d)
        ok = nf.NeuralNetwork.load(target).layers[0].W.shape == (3001, 3000)
        print(f"{kills} saves killed with SIGKILL ({hit} with a temporary file present at the kill): "
              f"{len(left)} temporary file(s), {size / 2**20:.0f} MB, before the next save; {len(after)} after it; "
              f"the target loads: {ok}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args(argv)
    measure_hostile()
    measure_kills(args.kills)


if __name__ == "__main__":
    main()
