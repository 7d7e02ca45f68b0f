#!/usr/bin/env python3
"""GPU training throughput: nn_from_scratch on CuPy vs PyTorch eager CUDA, on the same card.

    python benchmarks/bench_gpu.py                       # both nets, batch 256 and 1024
    python benchmarks/bench_gpu.py --quick               # smoke run
    python benchmarks/bench_gpu.py --json gpu.json
    python benchmarks/bench_gpu.py --dry-run-numpy       # the same code path on the CPU:
                                                         # NumPy backend and torch CPU (no GPU needed)

Needs CuPy with a usable CUDA GPU (``pip install -e .[gpu]``); PyTorch with
CUDA is optional (skipped with a note when absent).  TensorFlow is not used.
Without CuPy or a GPU the script stops with a message saying what is missing
(exit code 2), unless ``--dry-run-numpy`` is given.

Variants, for each net (``seed_cnn``, ``lenet5``) and batch size, with plain
SGD (lr 0.01) and softmax cross-entropy on the same MNIST digits:

* ``ours.fit``         ``nn_from_scratch.backend.use('cupy')``, the network built after it (parameters
                       on the device), ``network.fit(X, y, ...)`` with the host arrays (``fit`` copies the
                       data set to the device once per call);
* ``ours.train_step``  the data put on the device once, a loop of ``network.train_step`` over
                       device-resident batches;
* ``torch.eager``      the PyTorch model and the data on ``cuda``, an eager loop (zero_grad, forward,
                       cross_entropy, backward, step) over device-resident batches.

Timing: warm-up on a few batches including one of the odd last-batch size
(kernel compilation, cuDNN/cuBLAS handles), then ``--repeats`` timed runs of
``--samples`` samples; the device is synchronised (``cupy.cuda.Device().synchronize()``,
``torch.cuda.synchronize()``) before each timer is read; the median is reported.
Memory: ``device MB`` is the peak of the bytes allocated above those held
before the run (CuPy: a tracking allocator wrapped around the memory pool
during an extra, untimed pass over the warm-up batches, so the timed runs
pay nothing for it; torch: ``torch.cuda.max_memory_allocated``);
``reserved MB`` is what the caching allocator holds beyond the arrays alive
before the timed runs (parameters, data): CuPy ``MemoryPool.total_bytes()``,
torch ``max_memory_reserved()``.  Allocator caches are emptied between
cases, never between the warm-up and the timed runs.  In the dry run
both are replaced by the peak RSS over an untimed pass over the warm-up batches.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.ensure_repo_on_path()

FRAMEWORKS = ("ours.fit", "ours.train_step", "torch.eager")
OURS = ("ours.fit", "ours.train_step")
MB = 2 ** 20


# ---------------------------------------------------------------------- devices
class CupyDevice:
    """Our side on the GPU: synchronisation and memory figures of CuPy's default pool."""

    name = "cupy"

    def __init__(self, cupy):
        self.cp = cupy
        self.dev = cupy.cuda.Device()
        self.pool = cupy.get_default_memory_pool()

    def sync(self):
        self.dev.synchronize()

    def describe(self):
        cp = self.cp
        props = cp.cuda.runtime.getDeviceProperties(self.dev.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        rt = cp.cuda.runtime.runtimeGetVersion()
        drv = cp.cuda.runtime.driverGetVersion()
        free, total = cp.cuda.runtime.memGetInfo()
        return {"device": f"{name} (CUDA device {self.dev.id})", "cupy": cp.__version__,
                "cuda_runtime": f"{rt // 1000}.{rt % 1000 // 10}", "cuda_driver": f"{drv // 1000}.{drv % 1000 // 10}",
                "device_memory_gb": round(total / 2**30, 1), "device_memory_free_gb": round(free / 2**30, 1),
                "cupy_tf32": os.environ.get("CUPY_TF32", "0 (not set: float32 matmul without TF32)")}

    def release(self):
        self.sync()
        self.pool.free_all_blocks()

    def begin(self):
        """Start of the timed runs (the pool keeps the blocks the warm-up cached: no cudaMalloc in the timing)."""
        self.sync()
        self._base_used = self.pool.used_bytes()

    def end(self):
        self.sync()

    def reserved_mb(self):
        """Bytes the pool holds beyond the arrays alive at ``begin`` (parameters, data): its cache for training."""
        return (self.pool.total_bytes() - self._base_used) / MB

    def host_mb(self):
        return None

    def peak_allocated_mb(self, run):
        """Peak of the pool's used bytes above the current level while ``run()`` runs."""
        self.sync()
        pool = self.pool
        base = pool.used_bytes()
        peak = [base]

        def malloc(size):
            mem = pool.malloc(size)
            used = pool.used_bytes()
            if used > peak[0]:
                peak[0] = used
            return mem
        with self.cp.cuda.using_allocator(malloc):
            run()
            self.sync()
        return (peak[0] - base) / MB


class HostDevice:
    """The dry run's stand-in for a device: NumPy / torch CPU, memory from the process RSS.

    The RSS sampler runs only in the extra untimed pass (``peak_allocated_mb``),
    never during the timed runs (its thread competes for the GIL).
    """

    name = "numpy"

    def __init__(self, interval_s=0.002):
        self.interval_s = interval_s
        self._host_mb = None

    def sync(self):
        return None

    def describe(self):
        return {"device": f"CPU (dry run): {common.cpu_model()}, {common.usable_cores()} cores"}

    def release(self):
        common.release_memory()

    def begin(self):
        self._host_mb = None

    def end(self):
        return None

    def reserved_mb(self):
        return None

    def host_mb(self):
        return self._host_mb

    def peak_allocated_mb(self, run):
        """Runs ``run()`` with the RSS sampler on; keeps its peak for ``host_mb`` (returns None)."""
        with common.PeakRSS(self.interval_s) as mem:
            mem.start_segment()
            run()
        self._host_mb = mem.segment_mb
        return None


class TorchCuda:
    name = "cuda"

    def __init__(self, torch):
        self.torch = torch
        self.device = torch.device("cuda")

    def sync(self):
        self.torch.cuda.synchronize()

    def describe(self):
        t = self.torch
        return {"torch": t.__version__, "torch_device": t.cuda.get_device_name(self.device),
                "torch_cuda": t.version.cuda, "cudnn": t.backends.cudnn.version(),
                "cudnn_benchmark": t.backends.cudnn.benchmark,
                "tf32_matmul": t.backends.cuda.matmul.allow_tf32, "tf32_cudnn_conv": t.backends.cudnn.allow_tf32}

    def release(self):
        self.sync()
        self.torch.cuda.empty_cache()

    def begin(self):
        """Start of the timed runs (the caching allocator keeps what the warm-up reserved)."""
        self.sync()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        self._base_alloc = self.torch.cuda.memory_allocated(self.device)

    def end(self):
        self.sync()

    def reserved_mb(self):
        """Peak reserved bytes beyond the tensors alive at ``begin`` (parameters, data)."""
        return (self.torch.cuda.max_memory_reserved(self.device) - self._base_alloc) / MB

    def device_mb(self):
        return (self.torch.cuda.max_memory_allocated(self.device) - self._base_alloc) / MB

    def host_mb(self):
        return None


class TorchCpu(HostDevice):
    name = "cpu"

    def __init__(self, torch, interval_s=0.002):
        super().__init__(interval_s)
        self.torch = torch
        self.device = torch.device("cpu")

    def describe(self):
        t = self.torch
        return {"torch": t.__version__, "torch_device": "cpu (dry run)",
                "torch_threads": t.get_num_threads()}


# ---------------------------------------------------------------------- runners
def run_ours(case, dev, X, y, timing, variant):
    """``ours.fit`` / ``ours.train_step`` on the backend selected before (cupy, or numpy in the dry run)."""
    from nn_from_scratch.backend import to_device  # noqa: PLC0415
    plan = case.plan
    n, nw = plan.n_data, plan.n_warmup
    net = common.build_ours(case.net, case.batch)      # after backend.use(): parameters on the device
    case.params = net.count_params()
    like = net._param_like()
    if variant == "fit":
        def once():
            hist = net.fit(X[:n], y[:n], epochs=plan.epochs, batch_size=case.batch, verbose=0, seed=0)
            return hist.history["loss"][-1]

        def warm():
            net.fit(X[:nw], y[:nw], epochs=1, batch_size=case.batch, verbose=0, seed=0)
    else:
        Xd = to_device(X[:n], like=like)                # the data go to the device once
        yd = to_device(y[:n], like=like)
        batches = [(Xd[a:b], yd[a:b]) for a, b in plan.slices()]
        warm_batches = [(Xd[a:b], yd[a:b]) for a, b in plan.slices(nw)]

        def once():
            loss = None
            for _ in range(plan.epochs):
                for xb, yb in batches:
                    loss, _ = net.train_step(xb, yb)
            return loss

        def warm():
            for xb, yb in warm_batches:
                net.train_step(xb, yb)
    warm()
    dev.begin()
    timing.run(case, once, sync=dev.sync)
    dev.end()
    case.reserved_mb = dev.reserved_mb()
    case.device_mb = dev.peak_allocated_mb(warm)
    case.train_mb = dev.host_mb()


def run_torch(case, tdev, X, y, timing, torch):
    plan = case.plan
    F = torch.nn.functional
    torch.manual_seed(0)
    model = common.build_torch(case.net, torch).to(tdev.device)
    case.params = common.count_params_torch(model)
    opt = torch.optim.SGD(model.parameters(), lr=common.LR)
    Xt = torch.from_numpy(X[:plan.n_data]).to(tdev.device)   # the data go to the device once
    yt = torch.from_numpy(y[:plan.n_data]).to(tdev.device)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    batches = [(Xt[a:b], yt[a:b]) for a, b in plan.slices()]

    def once():
        loss = None
        for _ in range(plan.epochs):
            for xb, yb in batches:
                loss = step(xb, yb)
        return loss.item()

    def warm():
        for a, b in plan.slices(plan.n_warmup):
            step(Xt[a:b], yt[a:b])
    warm()
    tdev.begin()
    timing.run(case, once, sync=tdev.sync)
    tdev.end()
    case.reserved_mb = tdev.reserved_mb()
    if isinstance(tdev, TorchCuda):
        case.device_mb = tdev.device_mb()
    else:
        tdev.peak_allocated_mb(warm)
        case.train_mb = tdev.host_mb()


# ---------------------------------------------------------------------- report
HEADER = ["framework", "net", "batch", "samples/s", "device MB", "reserved MB", "host RSS MB",
          "ours.fit/this", "ours.step/this", "others CPU%"]


def result_rows(cases):
    by_key = {(c.framework, c.net, c.batch): c for c in cases}
    rows = []
    for c in cases:
        if c.error:
            rows.append([c.framework, c.net, str(c.batch), "error"] + ["-"] * 6)
            continue
        fit = by_key.get(("ours.fit", c.net, c.batch))
        stp = by_key.get(("ours.train_step", c.net, c.batch))
        sps = c.samples_per_s
        r_fit = fit.samples_per_s / sps if fit and fit.samples_per_s and sps else None
        r_stp = stp.samples_per_s / sps if stp and stp.samples_per_s and sps else None
        rows.append([c.framework, c.net, str(c.batch), common.fmt_num(sps), common.fmt_num(c.device_mb, 1),
                     common.fmt_num(c.reserved_mb, 1), common.fmt_num(c.train_mb, 1),
                     common.fmt_num(r_fit, 2), common.fmt_num(r_stp, 2), common.fmt_num(c.other_cpu_pct, 0)])
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None,
                   help="samples per timed run (default 20000 = 4 passes over the 5,000 digits; --quick: 600)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 256,1024; --quick: 64,256)")
    p.add_argument("--nets", default=",".join(common.NETS))
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3; --quick: 1)")
    p.add_argument("--warmup-batches", type=int, default=None, help="full warm-up batches (default 3; --quick: 1)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for other processes to leave the CPUs alone before each repeat")
    p.add_argument("--busy-retries", type=int, default=0, metavar="N",
                   help="run a repeat again when other processes were busy meanwhile, at most N times per case")
    p.add_argument("--dry-run-numpy", action="store_true",
                   help="run the same code with the NumPy backend and torch on the CPU (no GPU needed)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    a.samples = a.samples or (600 if a.quick else 20000)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.warmup_batches = a.warmup_batches if a.warmup_batches is not None else (1 if a.quick else 3)
    a.batch_sizes = [int(b) for b in (a.batch_sizes or ("64,256" if a.quick else "256,1024")).split(",")
                     if b.strip()]
    return common.check_common_args(p, a, FRAMEWORKS)


def setup_devices(args, notes):
    """``(ours device, torch device or None, torch module or None)``; exits with 2 when no GPU."""
    import nn_from_scratch.backend as backend  # noqa: PLC0415
    torch, why = common.try_import_torch() if "torch.eager" in args.frameworks else (None, "not requested")
    if args.dry_run_numpy:
        backend.use("numpy")
        dev = HostDevice()
        tdev = TorchCpu(torch) if torch is not None else None
        notes.append("DRY RUN: NumPy backend and torch on the CPU; the figures say nothing about a GPU")
    else:
        try:
            backend.use("cupy")
        except backend.BackendError as exc:
            print(f"ERROR: bench_gpu.py needs CuPy and a CUDA GPU: {exc}\n"
                  "Run it on a machine with an NVIDIA GPU and CuPy (pip install -e .[gpu]), or use "
                  "--dry-run-numpy to exercise the script on the CPU.", file=sys.stderr)
            sys.exit(2)
        import cupy  # noqa: PLC0415  (present: backend.use succeeded)
        dev = CupyDevice(cupy)
        tdev = None
        if torch is not None:
            if torch.cuda.is_available():
                tdev = TorchCuda(torch)
            else:
                why = f"torch {torch.__version__} sees no CUDA device (CPU-only build?)"
    if torch is None or tdev is None:
        if "torch.eager" in args.frameworks:
            notes.append(f"PyTorch skipped: {why}")
        torch = None
    return dev, tdev, torch


def main(argv=None):
    args = parse_args(argv)
    notes = []
    dev, tdev, torch = setup_devices(args, notes)
    X, y = common.load_data()
    info = common.machine_info(torch=torch)
    info.update(dev.describe())
    if tdev is not None:
        info.update(tdev.describe())
        if isinstance(tdev, TorchCuda) and isinstance(dev, CupyDevice):
            same = tdev.torch.cuda.current_device() == dev.dev.id
            info["same_card"] = same
            if not same:
                notes.append("WARNING: CuPy and torch use different CUDA devices")
    common.print_machine_info(info)
    print(f"\nData: {X.shape[0]} MNIST digits, {args.samples} samples per timed run, {args.repeats} repeat(s) "
          f"(median), warm-up {args.warmup_batches} batch(es) + 1 of the last batch's size; SGD lr {common.LR}")
    for n in notes:
        print("NOTE:", n)
    sys.stdout.flush()

    cases = []
    timing = common.Timing(args.repeats, args.wait_quiet, args.busy_retries)
    for net in args.nets:
        for batch in args.batch_sizes:
            plan = common.Plan(X.shape[0], args.samples, batch, args.warmup_batches)
            for fw in args.frameworks:
                if fw == "torch.eager" and tdev is None:
                    continue
                case = common.Case(fw, net, batch, plan)
                t0 = time.perf_counter()
                try:
                    if fw == "torch.eager":
                        run_torch(case, tdev, X, y, timing, torch)
                    else:
                        run_ours(case, dev, X, y, timing, "fit" if fw == "ours.fit" else "step")
                except Exception as exc:  # report, go on with the others
                    case.error = f"{type(exc).__name__}: {exc}"
                    print(f"ERROR in {fw} {net} batch {batch}: {case.error}", file=sys.stderr)
                # the case's arrays are gone now: empty both allocators' caches before the next case
                common.release_memory()
                for d in (dev, tdev):
                    if d is not None:
                        d.release()
                cases.append(case)
                if case.samples_per_s:
                    print(f"  {fw:<16} {net:<9} batch {batch:>5}: {case.samples_per_s:>10,.0f} samples/s "
                          f"(loss {case.final_loss:.4f}, {time.perf_counter() - t0:.1f} s)", flush=True)

    where = "CPU, DRY RUN" if args.dry_run_numpy else info.get("device", "GPU")
    print(f"\nTraining throughput on {where}, {args.samples} samples per timed run (median of {args.repeats}); "
          "ratios > 1 mean ours is faster")
    print(common.format_table(HEADER, result_rows(cases)))
    print("device MB: peak allocated above the start of the run; reserved MB: allocator cache beyond the "
          "arrays alive at the start;\nhost RSS MB: peak RSS over the warm-up batches above the RSS before them (dry run only); "
          "others CPU%: CPU share of other processes meanwhile")
    print("\nTarget: ours faster than PyTorch on the same card")
    verdicts = []
    for net in args.nets:
        for batch in args.batch_sizes:
            group = {c.framework: c.samples_per_s for c in cases if c.net == net and c.batch == batch
                     and c.samples_per_s}
            other = group.get("torch.eager")
            for fw in OURS:
                if fw in group and other:
                    v = {"net": net, "batch": batch, "ours": fw, "samples_per_s": group[fw],
                         "torch_samples_per_s": other, "ratio": group[fw] / other,
                         "faster": group[fw] > other}
                    verdicts.append(v)
                    print(f"  {net:<9} batch {batch:>5} {fw:<16} {group[fw]:>10,.0f} vs torch.eager "
                          f"{other:,.0f}: x{v['ratio']:.2f} -> {'yes' if v['faster'] else 'NO'}")
    for c in cases:
        if c.final_loss is not None and not math.isfinite(c.final_loss):
            print(f"PROBLEM: {c.framework} {c.net} batch {c.batch}: loss {c.final_loss}")
        if c.params is not None and c.params != common.NET_PARAMS[c.net]:
            print(f"PROBLEM: {c.framework} {c.net} has {c.params} parameters, expected {common.NET_PARAMS[c.net]}")
    if args.json:
        common.write_json(args.json, {
            "script": "bench_gpu.py", "argv": sys.argv[1:] if argv is None else list(argv),
            "dry_run_numpy": args.dry_run_numpy, "machine": info, "notes": notes,
            "config": {"samples": args.samples, "timing": timing.as_dict(), "repeats": args.repeats,
                       "warmup_batches": args.warmup_batches,
                       "batch_sizes": args.batch_sizes, "nets": args.nets, "frameworks": args.frameworks,
                       "lr": common.LR},
            "results": [c.as_dict() for c in cases], "verdicts": verdicts})
        print(f"\nJSON written to {args.json}")
    return 1 if any(c.error for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
