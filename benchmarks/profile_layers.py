#!/usr/bin/env python3
"""Where a training step's time goes in nn_from_scratch: per layer, forward and backward.

    python benchmarks/profile_layers.py                    # both nets, batch 50 and 256
    python benchmarks/profile_layers.py --quick            # a few repetitions only
    python benchmarks/profile_layers.py --nets lenet5 --batch-sizes 256 --reps 100 --json prof.json
    python benchmarks/profile_layers.py --backend cupy     # on a GPU (synchronises after every part)
    python benchmarks/profile_layers.py --blas-threads 1   # BLAS as in a split step's shard

One training step of ``NeuralNetwork.train_step`` is taken apart with the
public layer API, in the order the network runs it::

    x, i, unit = runner.forward_step(layers, i, x)   unit by unit -> "<unit> forward"
        (a unit is a layer, a ReLU -> MaxPool pair or a Convolution -> ReLU -> MaxPool
         block by pooling phase, as the engine runs them in fit: engine/runner.py;
         --unfused: every layer on its own)
    loss = loss_fn.forward(out, y)                           -> "loss forward"
    g = loss_fn.backward()                                   -> "loss backward"
    g = runner.backward_step(layers, first, unit, g, ...)  reversed -> "<unit> backward"
    optimizer.step(layers)                                   -> "optimizer step"

Each part is timed with ``time.perf_counter`` (after a device synchronisation
on the GPU), ``--reps`` times after ``--warmup`` untimed steps, on the same
batch (the weights keep training, as in a real run); the table gives the
median of each part in ms and as % of the sum of the medians.  The median of
whole ``train_step`` calls is printed beside it: the difference is the cost
of the timers and of the network's Python loop.  The network is built with
``workers=1``: its steps run in this process, as the parts do (the split over
the cores is ``bench_cpu.py``'s to measure).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.ensure_repo_on_path()


def describe(layer):
    """Short text naming a layer and its configuration."""
    name = type(layer).__name__
    if name == "Convolution":
        k = "x".join(str(v) for v in layer.kernel_size)
        pad = "" if layer.padding in (0, "valid") else f" pad {layer.padding}"
        bias = "" if layer.use_bias else " no bias"
        return f"Conv {layer.in_channels}->{layer.out_channels} {k}{pad}{bias}"
    if name == "Linear":
        return f"Linear {layer.in_features}->{layer.out_features}"
    if name in ("MaxPool", "AvgPool"):
        return f"{name} {'x'.join(str(v) for v in layer.pool_size)}"
    return name


def profile(net_name, batch, X, y, reps, warmup, sync):
    """``(parts, step_ms)``: parts = [(label, kind, [ms per rep])], step_ms = [ms per whole train_step]."""
    from nn_from_scratch.backend import to_device  # noqa: PLC0415
    net = common.build_ours(net_name, batch, workers=1)     # one process, as the parts are timed
    like = net._param_like()
    xb = to_device(X[:batch], like=like)
    yb = to_device(y[:batch], like=like)
    layers, loss_fn, opt = net.layers, net.loss_fn, net.optimizer
    fwd, bwd = {}, {}                  # (first, stop) of a unit -> [ms per rep]
    loss_f, loss_b, step = [], [], []
    clock = time.perf_counter

    runner = net._runner
    for rep in range(warmup + reps):
        keep = rep >= warmup
        x, i, tape = xb, 0, []
        while i < len(layers):        # unit by unit, as the engine runs them in fit (engine/runner.py)
            sync()
            t = clock()
            x, stop, unit = runner.forward_step(layers, i, x)
            sync()
            if keep:
                fwd.setdefault((i, stop), []).append((clock() - t) * 1e3)
            tape.append((i, stop, unit))
            i = stop
        t = clock()
        loss_fn.forward(x, yb, validate=False)
        sync()
        t2 = clock()
        g = loss_fn.backward()
        sync()
        t3 = clock()
        if keep:
            loss_f.append((t2 - t) * 1e3)
            loss_b.append((t3 - t2) * 1e3)
        for first, stop, unit in reversed(tape):
            t = clock()
            g = runner.backward_step(layers, first, unit, g, need_input_grad=first > 0)
            sync()
            if keep:
                bwd.setdefault((first, stop), []).append((clock() - t) * 1e3)
        t = clock()
        opt.step(layers)
        sync()
        if keep:
            step.append((clock() - t) * 1e3)

    def label(first, stop):
        return f"{first:>2} " + " + ".join(describe(layers[k]) for k in range(first, stop))

    def kind(first, stop):
        return "+".join(type(layers[k]).__name__ for k in range(first, stop))

    parts = [(f"{label(*u)} forward", kind(*u), "forward", v) for u, v in fwd.items()]
    parts.append(("   loss forward", "loss", "forward", loss_f))
    parts.append(("   loss backward", "loss", "backward", loss_b))
    parts += [(f"{label(*u)} backward", kind(*u), "backward", v) for u, v in bwd.items()]
    parts.append(("   optimizer step", "optimizer", "update", step))

    whole = []
    for rep in range(warmup + reps):
        sync()
        t = clock()
        net.train_step(xb, yb)
        sync()
        if rep >= warmup:
            whole.append((clock() - t) * 1e3)
    return parts, whole


def report(net_name, batch, parts, whole, print_fn=print):
    meds = [(label, kind, phase, common.median(v)) for label, kind, phase, v in parts]
    mins = [min(v) for *_, v in parts]
    total = sum(m for *_, m in meds)
    rows = [[label, f"{m:.3f}", f"{100 * m / total:.1f}", f"{lo:.3f}"] for (label, _, _, m), lo in zip(meds, mins)]
    rows.append(["sum of parts", f"{total:.3f}", "100.0", f"{sum(mins):.3f}"])
    step = common.median(whole)
    rows.append(["whole train_step", f"{step:.3f}", f"{100 * step / total:.1f}", f"{min(whole):.3f}"])
    print_fn(f"\n{net_name}, batch {batch}: {batch / step * 1e3:,.0f} samples/s from the train_step median")
    print_fn(common.format_table(["part", "ms", "%", "min ms"], rows))
    # by layer type and phase
    groups = {}
    for _, kind, phase, m in meds:
        groups[(kind, phase)] = groups.get((kind, phase), 0.0) + m
    grows = sorted(groups.items(), key=lambda kv: -kv[1])
    print_fn(common.format_table(["layer type / phase", "ms", "%"],
                                 [[f"{k} {p}", f"{m:.3f}", f"{100 * m / total:.1f}"] for (k, p), m in grows]))
    return {"net": net_name, "batch": batch, "train_step_ms": step, "sum_ms": total,
            "train_step_min_ms": min(whole),
            "parts": [{"part": label.strip(), "kind": kind, "phase": phase, "ms": m, "min_ms": lo,
                       "percent": 100 * m / total} for (label, kind, phase, m), lo in zip(meds, mins)],
            "by_kind": [{"kind": k, "phase": p, "ms": m, "percent": 100 * m / total} for (k, p), m in grows]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join(common.NETS))
    p.add_argument("--batch-sizes", default="50,256")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 50; --quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; --quick: 1)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each net/batch, wait up to this long for other processes to leave the CPUs alone")
    p.add_argument("--blas-threads", type=int, default=None, metavar="N",
                   help="hold BLAS to N threads (threadpoolctl); a split training step runs each shard "
                        "with 1, so --blas-threads 1 shows a shard's parts; default: the library's own")
    p.add_argument("--unfused", action="store_true",
                   help="every layer on its own (the engine runs ReLU -> MaxPool pairs fused: engine/fusion.py)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.unfused:
        from nn_from_scratch.engine import fusion  # noqa: PLC0415
        fusion.ENABLED = False
    if a.blas_threads is not None and a.blas_threads < 1:
        p.error("--blas-threads must be >= 1")
    reps = a.reps or (3 if a.quick else 50)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 5)
    nets = [n.strip() for n in a.nets.split(",") if n.strip()]
    batches = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
    for n in nets:
        if n not in common.NETS:
            p.error(f"unknown net {n!r}; expected some of {common.NETS}")

    import nn_from_scratch.backend as backend  # noqa: PLC0415
    try:
        backend.use(a.backend)
    except backend.BackendError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if a.backend == "cupy":
        import cupy  # noqa: PLC0415
        dev = cupy.cuda.Device()

        def sync():
            dev.synchronize()
    else:
        def sync():
            return None

    X, y = common.load_data()
    info = common.machine_info()
    common.print_machine_info(info)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    threads = "default" if a.blas_threads is None else a.blas_threads
    print(f"\nbackend {a.backend}; BLAS threads {threads}; {reps} timed repetitions after {warmup} warm-up "
          "steps; median per part")
    out = []
    for net in nets:
        for b in batches:
            if a.wait_quiet > 0:
                common.wait_until_quiet(a.wait_quiet)
            with common.OtherLoad() as other, threadpool_limits(limits=a.blas_threads, user_api="blas"):
                parts, whole = profile(net, b, X, y, reps, warmup, sync)
            out.append(report(net, b, parts, whole))
            out[-1]["other_cpu_pct"] = other.percent
            if other.percent is not None:
                print(f"(other processes used {other.percent:.0f}% of the CPUs meanwhile"
                      + ("; figures DISTURBED)" if other.percent > common.BUSY_PCT else ")"))
    if a.json:
        common.write_json(a.json, {"script": "profile_layers.py", "machine": info, "backend": a.backend,
                                   "reps": reps, "warmup": warmup, "blas_threads": a.blas_threads,
                                   "profiles": out})
        print(f"\nJSON written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
