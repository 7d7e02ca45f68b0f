"""Hostile analysis result files are refused before anything is decompressed or built.

1. A zip bomb: a valid ``PermutationTestResult`` file with one extra member, ``--gib`` GiB of zeros
   deflated to about 2 MB (the audit's file).  ``PermutationTestResult.load`` is timed (best of 5)
   and its memory measured twice: the ``tracemalloc`` peak and the peak RSS growth
   (``ru_maxrss``) of a fresh subprocess.  ``--old`` also times the former reader (``np.load`` of
   every member) in a subprocess, for the same-run ratio.
2. A 59 KB separation result listing 10,000 classes: ``SeparationResult.from_json``, timed.

    python benchmarks/result_file_checks.py [--gib 2] [--old]
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from nn_from_scratch.analysis.permutation import PermutationTestResult  # noqa: E402
from nn_from_scratch.analysis.separation import JSON_FORMAT, SeparationResult  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zip_bomb(path, gib):
    """A saved result plus a member ``junk.npy`` declaring ``gib`` GiB of uint8 zeros, deflated."""
    rng = np.random.default_rng(0)
    PermutationTestResult(rng.random((4, 4)), rng.random((9, 4, 4))).save(path)
    n = int(gib * 2 ** 30)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
    header = buf.getvalue()
    chunk = bytes(64 << 20)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("junk.npy", "w", force_zip64=True) as f:
            f.write(header)
            left = n
            while left:
                k = min(left, len(chunk))
                f.write(chunk[:k])
                left -= k
    return os.path.getsize(path)


CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from nn_from_scratch.analysis.permutation import PermutationTestResult
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if {old}:
    with np.load({path!r}, allow_pickle=False) as f:
        arrays = {{k: f[k] for k in f.files}}
    outcome = "read " + str(sum(a.nbytes for a in arrays.values())) + " bytes"
else:
    try:
        PermutationTestResult.load({path!r})
        outcome = "LOADED"
    except ValueError as exc:
        outcome = "refused: " + str(exc)[:160]
print(time.perf_counter() - t0, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, outcome)
"""


def child(path, old):
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT, path=path, old=old)], capture_output=True,
                         text=True, check=True).stdout.split(maxsplit=2)
    return float(out[0]), float(out[1]), out[2].strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--old", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bomb.npz")
        t0 = time.perf_counter()
        size = zip_bomb(path, args.gib)
        print(f"zip bomb: {size / 2 ** 20:.2f} MiB on disk, declares {args.gib:g} GiB "
              f"(built in {time.perf_counter() - t0:.1f} s)")
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            try:
                PermutationTestResult.load(path)
                raise SystemExit("the zip bomb was LOADED")
            except ValueError as exc:
                msg = str(exc)
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        try:
            PermutationTestResult.load(path)
        except ValueError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t_child, rss, outcome = child(path, False)
        print(f"PermutationTestResult.load: refused in {min(times) * 1e3:.2f} ms (best of 5), tracemalloc peak "
              f"{peak / 2 ** 10:.0f} KiB, subprocess {t_child * 1e3:.1f} ms and peak RSS growth {rss:.1f} MiB")
        print(f"  message: {msg[:300]}")
        if args.old:
            t_old, rss_old, what = child(path, True)
            print(f"former reader (np.load of every member): {t_old:.2f} s, peak RSS growth {rss_old:.0f} MiB "
                  f"({what}); {t_old / t_child:.0f}x the refusal's time" +
                  (f", {rss_old / rss:.0f}x its memory" if rss >= 1 else
                   "; the refusal's RSS growth is below ru_maxrss's resolution"))
        data = {"format": JSON_FORMAT, "layers": ["input"], "classes": list(range(10_000)), "pairs": [[0, 1]],
                "m": [5], "n": [5], **{k: [[0.0]] for k in ("H", "R", "z", "p_value", "log_p", "R_min", "R_max")}}
        jpath = os.path.join(d, "many.json")
        with open(jpath, "w") as f:
            json.dump(data, f)
        t0 = time.perf_counter()
        try:
            SeparationResult.from_json(jpath)
            raise SystemExit("the 10,000-class file was LOADED")
        except ValueError as exc:
            msg = str(exc)
        print(f"SeparationResult.from_json of a {os.path.getsize(jpath) / 1e3:.0f} KB file listing 10,000 classes: "
              f"refused in {(time.perf_counter() - t0) * 1e3:.1f} ms: {msg[-90:]}")


if __name__ == "__main__":
    main()
