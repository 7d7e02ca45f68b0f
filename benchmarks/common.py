"""Shared helpers of the benchmark scripts: data, the two networks, timers, memory, tables.

Nothing here is part of the ``nn_from_scratch`` package; the scripts in this folder
import it as ``common`` (they put their own folder on ``sys.path``).  TensorFlow,
PyTorch and CuPy are imported lazily, only by the functions that need them, so
every script runs with whatever subset of them is installed.

The two networks (MNIST, 1x28x28 inputs, 10 classes):

* ``seed_cnn`` - the seed lab's CNN: Conv 3x3 1->4 (no bias), ReLU, Conv 7x7 4->2
  (no bias), ReLU, Flatten, Linear 800->10 (8,438 parameters);
* ``lenet5``   - LeNet-5: Conv 6@5x5 pad 2 (+bias), ReLU, MaxPool 2, Conv 16@5x5
  (+bias), ReLU, MaxPool 2, Flatten, Linear 400->120, ReLU, Linear 120->84, ReLU,
  Linear 84->10 (61,706 parameters).

All are trained with plain SGD (lr 0.01) on the mean softmax cross-entropy of the logits.
"""
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import threading
import time

import numpy as np

NETS = ("seed_cnn", "lenet5")
LR = 0.01
NET_PARAMS = {"seed_cnn": 8438, "lenet5": 61706}

# the issue's figures (samples/s, batch 50, measured before this benchmark existed)
ISSUE_FIGURES = {
    ("keras.fit", "seed_cnn", 50): 2245, ("keras.fit", "lenet5", 50): 3871,
    ("torch.eager", "seed_cnn", 50): 8418, ("torch.eager", "lenet5", 50): 8571,
}


# ----------------------------------------------------------------------------- paths
def repo_root():
    """The checkout holding ``nn_from_scratch`` (this file's parent's parent)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_repo_on_path():
    """Import ``nn_from_scratch`` from this checkout, not from an installed copy elsewhere."""
    root = repo_root()
    if root not in sys.path:
        sys.path.insert(0, root)


# ------------------------------------------------------------------------------ data
def load_data(n=None):
    """MNIST digits ``(X, y)``: ``X (N, 1, 28, 28)`` float32 in [0, 1], ``y (N,)`` int64.

    The 5,000 bundled digits (``load_mnist('all')``); ``n`` keeps the first n.
    """
    ensure_repo_on_path()
    from nn_from_scratch.data.datasets import load_mnist  # noqa: PLC0415
    X, y = load_mnist("all")
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    if n is not None:
        X, y = X[:n], y[:n]
    return X, y


class Plan:
    """How many samples a timed run sees, in which batches.

    The timed run makes ``epochs`` passes over the first ``n_data`` digits (all
    5,000 when ``samples`` exceeds them), so ``samples_done = epochs * n_data``
    (>= ``samples``).  Each pass is cut into batches of ``batch`` with one
    smaller last batch when ``batch`` does not divide ``n_data``; every
    framework gets exactly these batches.  The warm-up set (excluded from the
    timing) is the first ``warmup_batches`` full batches plus a batch of the
    last batch's size, so that every shape the timed run meets is traced,
    compiled and cached before the timer starts.
    """

    def __init__(self, n_available, samples, batch, warmup_batches=3):
        if samples < 1 or batch < 1:
            raise ValueError(f"samples and batch must be >= 1, received {samples}, {batch}")
        self.batch = int(batch)
        self.n_data = int(min(samples, n_available))
        self.epochs = int(-(-samples // self.n_data))
        self.samples_done = self.epochs * self.n_data
        rest = self.n_data % self.batch
        self.n_warmup = int(min(warmup_batches * self.batch + rest, n_available))
        if self.n_warmup == 0:
            self.n_warmup = min(self.batch, n_available)

    def slices(self, n=None):
        """``(start, stop)`` of each batch of one pass over the first n (default n_data) samples."""
        n = self.n_data if n is None else n
        return [(a, min(a + self.batch, n)) for a in range(0, n, self.batch)]

    def as_dict(self):
        return {"batch": self.batch, "n_data": self.n_data, "epochs": self.epochs,
                "samples_done": self.samples_done, "n_warmup": self.n_warmup}


# --------------------------------------------------------------------------- results
BUSY_PCT = 10.0  # others' CPU share (percent) above which a timed repeat counts as disturbed


class Case:
    """One (framework, net, batch) run's data and results.

    ``seconds[i]`` is the i-th timed repeat and ``other_pcts[i]`` the CPU share
    other processes took meanwhile; ``samples_per_s`` uses the median of the
    quiet repeats (others <= BUSY_PCT), or of all repeats when none was quiet.
    """

    def __init__(self, framework, net, batch, plan):
        self.framework, self.net, self.batch, self.plan = framework, net, batch, plan
        self.seconds = []          # one entry per timed repeat
        self.other_pcts = []       # others' CPU share during each repeat (None: unknown)
        self.train_mb = None
        self.total_mb = None
        self.tracemalloc_mb = None
        self.device_mb = None      # GPU: peak device memory allocated above the baseline
        self.reserved_mb = None    # GPU: growth of the allocator's reserved memory
        self.final_loss = None
        self.params = None
        self.threads = None
        self.error = None

    def _used(self):
        quiet = [i for i, o in enumerate(self.other_pcts) if o is None or o <= BUSY_PCT]
        return quiet or list(range(len(self.seconds)))

    @property
    def samples_per_s(self):
        if not self.seconds:
            return None
        return self.plan.samples_done / median([self.seconds[i] for i in self._used()])

    @property
    def other_cpu_pct(self):
        """Largest share of the CPUs other processes took during the repeats the figure uses."""
        known = [self.other_pcts[i] for i in self._used() if i < len(self.other_pcts)
                 and self.other_pcts[i] is not None]
        return max(known) if known else None

    def as_dict(self):
        sps = [self.plan.samples_done / s for s in self.seconds]
        return {"framework": self.framework, "net": self.net, "batch": self.batch,
                "samples_per_s": self.samples_per_s, "samples_per_s_all": sps,
                "seconds": self.seconds, "other_cpu_pct_all": self.other_pcts, "repeats_used": self._used(),
                "samples_timed": self.plan.samples_done,
                "train_mb": self.train_mb, "total_mb": self.total_mb, "tracemalloc_mb": self.tracemalloc_mb,
                "device_mb": self.device_mb, "reserved_mb": self.reserved_mb,
                "final_loss": self.final_loss, "other_cpu_pct": self.other_cpu_pct,
                "params": self.params, "threads": self.threads,
                "error": self.error, "plan": self.plan.as_dict()}


class Timing:
    """How the timed repeats run: count, order, and what to do about a busy machine.

    ``repeats`` timed runs are wanted.  With ``wait_s > 0`` each repeat first
    waits (up to ``wait_s``) for other processes to leave the CPUs alone; a
    repeat during which others took more than BUSY_PCT is run again, at most
    ``retries`` extra times per case.

    ``interleave=True``: ``run`` only queues the case, and ``flush`` times all
    queued cases round-robin, one repeat of each in turn (A B C A B C ...), so
    that a slow stretch of a shared machine falls on every framework alike
    instead of on whichever ran during it; the median then compares like with like.
    """

    def __init__(self, repeats, wait_s=0.0, retries=0, interleave=False):
        self.repeats, self.wait_s, self.retries = int(repeats), float(wait_s), int(retries)
        self.interleave = bool(interleave)
        self.queued = []

    def run(self, case, once, sync=None):
        """Time ``once()`` (returns the last loss) into ``case.seconds``/``case.other_pcts``
        (queued until ``flush`` when interleaving)."""
        self.queued.append((case, once, sync))
        if not self.interleave:
            self.flush()

    def flush(self):
        """Time every queued case: ``repeats`` quiet repeats each (round-robin), then empty the queue.
        Interleaving, a case whose run raises gets ``case.error`` and leaves the rotation (the
        others go on); otherwise the exception reaches ``run``'s caller, as it did before."""
        state = {id(case): [0, 0] for case, _, _ in self.queued}      # quiet repeats, extra repeats
        todo = list(self.queued)
        self.queued = []
        while todo:
            for entry in list(todo):
                case, once, sync = entry
                try:
                    quiet = self._one(case, once, sync)
                except Exception as exc:  # noqa: BLE001 - reported with the case
                    if not self.interleave:
                        raise
                    case.error = f"{type(exc).__name__}: {exc}"
                    todo.remove(entry)
                    continue
                counts = state[id(case)]
                if quiet or counts[1] >= self.retries:
                    counts[0] += 1          # quiet, or out of retries: keep the disturbed repeat
                else:
                    counts[1] += 1
                if counts[0] >= self.repeats:
                    todo.remove(entry)

    def _one(self, case, once, sync):
        """One timed repeat; True when other processes stayed below BUSY_PCT meanwhile."""
        if self.wait_s > 0:
            wait_until_quiet(self.wait_s, window_s=1.0, print_fn=lambda *a: None)
        if sync is not None:
            sync()
        with OtherLoad() as other:
            t0 = time.perf_counter()
            loss = once()
            if sync is not None:
                sync()
            dt = time.perf_counter() - t0
        case.seconds.append(dt)
        case.other_pcts.append(other.percent)
        case.final_loss = float(loss)
        return other.percent is None or other.percent <= BUSY_PCT

    def as_dict(self):
        return {"repeats": self.repeats, "wait_quiet_s": self.wait_s, "busy_retries": self.retries,
                "busy_pct": BUSY_PCT}


# ------------------------------------------------------------------------- networks
def build_ours(net, batch, workers="auto"):
    """The network in nn_from_scratch (parameters on the current default backend)."""
    ensure_repo_on_path()
    import nn_from_scratch as nn  # noqa: PLC0415
    from nn_from_scratch.examples import networks  # noqa: PLC0415
    if net == "seed_cnn":
        layers = networks.seed_lab_layers(batch)
    elif net == "lenet5":
        layers = networks.lenet5_layers(batch)
    else:
        raise ValueError(f"unknown net {net!r}; expected one of {NETS}")
    return nn.NeuralNetwork(layers, loss_fn=nn.SoftMaxLoss(), optimizer=nn.GradientDescent(lr=LR),
                            batch_size=batch, input_shape=(1, 28, 28), name=net, workers=workers)


def build_keras(net):
    """The network in Keras 3 (channels-last input (28, 28, 1)), compiled for ``fit``."""
    import keras  # noqa: PLC0415
    L = keras.layers
    if net == "seed_cnn":
        body = [L.Conv2D(4, 3, use_bias=False), L.ReLU(), L.Conv2D(2, 7, use_bias=False), L.ReLU(),
                L.Flatten(), L.Dense(10)]
    elif net == "lenet5":
        body = [L.Conv2D(6, 5, padding="same"), L.ReLU(), L.MaxPooling2D(2),
                L.Conv2D(16, 5), L.ReLU(), L.MaxPooling2D(2), L.Flatten(),
                L.Dense(120), L.ReLU(), L.Dense(84), L.ReLU(), L.Dense(10)]
    else:
        raise ValueError(f"unknown net {net!r}; expected one of {NETS}")
    model = keras.Sequential([keras.Input((28, 28, 1))] + body, name=net)
    # the seed lab's compile call (loss + accuracy, as our fit reports), with lr 0.01
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def build_torch(net, torch):
    """The network as a ``torch.nn.Sequential`` (NCHW input), on the CPU (move it with ``.to``)."""
    nn = torch.nn
    if net == "seed_cnn":
        layers = [nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 7, bias=False), nn.ReLU(),
                  nn.Flatten(), nn.Linear(800, 10)]
    elif net == "lenet5":
        layers = [nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)]
    else:
        raise ValueError(f"unknown net {net!r}; expected one of {NETS}")
    return nn.Sequential(*layers)


def count_params_keras(model):
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def count_params_torch(model):
    return int(sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------- memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes():
    """Resident set size of this process now (bytes), from /proc/self/statm; None if unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_memory():
    """Collect garbage and give freed C-heap pages back to the OS, so a baseline RSS is low."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory (RSS) above a baseline, sampled by a background thread.

    ``with PeakRSS(interval_s) as m: ...`` reads ``/proc/self/statm`` every
    ``interval_s`` seconds.  ``m.peak_mb`` is the largest RSS seen minus the
    RSS read when the block started; ``m.start_segment()`` takes a new baseline
    (after freeing what can be freed) for a part of the block, whose peak above
    that baseline is ``m.segment_mb``.  MB = 2**20 bytes; ``None`` where /proc
    is missing.  Allocations shorter than the interval can be missed, and
    memory the process already holds from earlier work (allocator caches) is
    reused without showing up, so the figures are lower bounds.
    """

    def __init__(self, interval_s=0.002):
        self.interval_s = float(interval_s)
        self.baseline = self.peak = None
        self.seg_baseline = self.seg_peak = None
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        r = rss_bytes()
        if r is None:
            return
        with self._lock:
            self.samples += 1
            if r > self.peak:
                self.peak = r
            if self.seg_peak is not None and r > self.seg_peak:
                self.seg_peak = r

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        release_memory()
        self.baseline = rss_bytes()
        if self.baseline is None:
            return self
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._run, name="PeakRSS", daemon=True)
        self._thread.start()
        return self

    def start_segment(self):
        """Start measuring a part of the block from the RSS now (after a gc/malloc_trim)."""
        if self.baseline is None:
            return
        release_memory()
        r = rss_bytes()
        with self._lock:
            self.seg_baseline = self.seg_peak = r

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
        return False

    @property
    def peak_mb(self):
        if self.baseline is None or self.peak is None:
            return None
        return (self.peak - self.baseline) / 2**20

    @property
    def segment_mb(self):
        if self.seg_baseline is None or self.seg_peak is None:
            return None
        return (self.seg_peak - self.seg_baseline) / 2**20


# ------------------------------------------------------------------ other processes
def _cpu_ticks():
    """``(busy, total)`` clock ticks of all CPUs since boot, from /proc/stat; None if unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def _proc_ticks(path):
    """``(own, reaped children)`` user + system ticks from a /proc/<pid>/stat file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _self_ticks():
    """CPU ticks (user + system, all threads) used by this process and its children: the training
    workers ``nn_from_scratch.parallel`` forks are ours, not "other" load.  Live children are read
    from /proc (/proc/self/task/*/children), finished ones from this process's cutime/cstime."""
    try:
        own, reaped = _proc_ticks("/proc/self/stat")
    except (OSError, ValueError, IndexError):
        return None
    live = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                for pid in f.read().split():
                    try:
                        live += _proc_ticks(f"/proc/{pid}/stat")[0]
                    except (OSError, ValueError, IndexError):
                        pass                       # ended meanwhile: counted in ``reaped`` next time
    except OSError:
        pass
    return own + reaped + live


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes during a block (percent).

    ``with OtherLoad() as o: ...; o.percent`` = 100 * (busy ticks of all CPUs -
    ticks of this process) / all ticks, over the block.  Near 0 on an idle
    machine; a busy machine makes every timing of the block unreliable
    (multi-threaded libraries whose threads wait for each other suffer most).
    ``None`` where /proc is missing or the block was too short to tell (< 5 ticks).
    """

    def __enter__(self):
        self._start = (_cpu_ticks(), _self_ticks())
        self.percent = None
        return self

    def __exit__(self, *exc):
        end = (_cpu_ticks(), _self_ticks())
        (c0, s0), (c1, s1) = self._start, end
        if None in (c0, s0, c1, s1):
            return False
        d_total = c1[1] - c0[1]
        if d_total < 5:
            return False
        others = (c1[0] - c0[0]) - (s1 - s0)
        self.percent = max(0.0, 100.0 * others / d_total)
        return False


def wait_until_quiet(max_wait_s, threshold_pct=10.0, window_s=2.0, print_fn=print):
    """Wait (up to ``max_wait_s``) until other processes use < ``threshold_pct`` of the CPUs.

    Returns the last measured share of other processes (percent), or None.
    """
    deadline = time.monotonic() + max_wait_s
    share = None
    while True:
        with OtherLoad() as o:
            time.sleep(window_s)
        share = o.percent
        if share is None or share < threshold_pct:
            return share
        if time.monotonic() >= deadline:
            print_fn(f"WARNING: other processes still use {share:.0f}% of the CPUs after waiting "
                     f"{max_wait_s:.0f} s; timings will be disturbed")
            return share
        print_fn(f"  waiting for a quiet machine: other processes use {share:.0f}% of the CPUs")
        sys.stdout.flush()


# ------------------------------------------------------------------------ threads
def blas_info():
    """``[{'library', 'version', 'threads', 'api'}, ...]`` of the BLAS/OpenMP pools NumPy loaded."""
    try:
        import threadpoolctl  # noqa: PLC0415
    except ImportError:
        return []
    out = []
    for p in threadpoolctl.threadpool_info():
        out.append({"library": p.get("internal_api"), "version": p.get("version"),
                    "threads": p.get("num_threads"), "api": p.get("user_api"),
                    "file": os.path.basename(p.get("filepath", ""))})
    return out


def numpy_blas_name():
    """NumPy's BLAS as its build config names it (e.g. 'scipy-openblas 0.3.31')."""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no mode="dicts"
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def machine_info(tf=None, torch=None):
    """Machine and library versions as a dict (``tf``/``torch``: the modules, when loaded)."""
    ensure_repo_on_path()
    import nn_from_scratch  # noqa: PLC0415
    mem = None
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"MemTotal:\s+(\d+)", f.read())
            mem = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "memory_gb": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas_name(),
        "blas_pools": blas_info(),
        "nn_from_scratch": getattr(nn_from_scratch, "__version__", "?"),
        "nn_from_scratch_path": os.path.dirname(nn_from_scratch.__file__),
        "git": git_revision(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if tf is not None:
        import keras  # noqa: PLC0415
        info["tensorflow"] = tf.__version__
        info["keras"] = keras.__version__
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
        info["tf_threads"] = {"intra_op": intra or f"default (0 = all {usable_cores()} cores)",
                              "inter_op": inter or "default (0 = chosen by TF)"}
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    return info


def git_revision():
    """``<short sha>[+dirty]`` of the checkout, or None outside git."""
    import subprocess  # noqa: PLC0415
    root = repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not sha:
        return None
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout.strip()
    return f"{branch}@{sha}" + ("+dirty" if dirty else "")


def print_machine_info(info, print_fn=print):
    print_fn("Machine")
    for k, v in info.items():
        if k == "blas_pools":
            for p in v:
                print_fn(f"  {'blas pool':<20} {p['library']} {p['version']} ({p['api']}, {p['file']}), "
                         f"{p['threads']} thread(s)")
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        print_fn(f"  {k:<20} {v}")


# ------------------------------------------------------------------------- tables
def fmt_num(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, float) and not np.isfinite(v):
        return "-"
    return f"{v:,.{digits}f}"


def format_table(header, rows, align=None):
    """Plain-text table with ``|`` separators; numbers right-aligned."""
    cols = list(zip(*([header] + rows))) if rows else [[h] for h in header]
    widths = [max(len(str(c)) for c in col) for col in cols]
    align = align or ["<"] + [">"] * (len(header) - 1)
    def line(cells):
        return "| " + " | ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def median(values):
    return statistics.median(values)


def write_json(path, payload):
    """Write ``payload`` as indented JSON (atomic rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def try_import_tensorflow():
    """``(tf, None)`` or ``(None, reason)``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf  # noqa: PLC0415
        import keras  # noqa: PLC0415, F401
    except Exception as exc:  # ImportError, or a broken install
        return None, f"{type(exc).__name__}: {exc}"
    return tf, None


def try_import_torch():
    """``(torch, None)`` or ``(None, reason)``."""
    try:
        import torch  # noqa: PLC0415
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return torch, None


def check_common_args(parser, args, frameworks):
    """Split the comma lists of ``--nets``/``--frameworks`` and check them and the counts."""
    args.nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for n in args.nets:
        if n not in NETS:
            parser.error(f"unknown net {n!r}; expected some of {NETS}")
    for f in args.frameworks:
        if f not in frameworks:
            parser.error(f"unknown framework {f!r}; expected some of {frameworks}")
    if args.samples < 1 or args.repeats < 1 or any(b < 1 for b in args.batch_sizes):
        parser.error("--samples, --repeats and the batch sizes must be >= 1")
    return args
