#!/usr/bin/env python3
"""CPU training throughput: nn_from_scratch vs Keras vs PyTorch, in one process, on the same data.

    python benchmarks/bench_cpu.py                      # full run (both nets, batch 50 and 256)
    python benchmarks/bench_cpu.py --quick              # smoke run (a few hundred samples)
    python benchmarks/bench_cpu.py --json out.json      # also write every figure as JSON
    python benchmarks/bench_cpu.py --nets lenet5 --batch-sizes 50 --frameworks ours.fit,torch.eager

For each net (``seed_cnn``, ``lenet5``; see ``common.py``) and batch size, every
framework variant trains on the same MNIST digits for the same number of
samples with plain SGD (lr 0.01) and softmax cross-entropy:

* ``ours.fit``           ``NeuralNetwork.fit(X, y, epochs=E, batch_size=B, verbose=0)`` (the public API;
                         shuffles, reports loss and accuracy per epoch; default ``workers="auto"``:
                         batches of >= 50 split over the cores in worker processes,
                         ``nn_from_scratch/engine/parallel/``);
* ``ours.fit_1thread``   the same with ``workers=1`` (no split: one process, BLAS at its default);
* ``ours.train_step``    a Python loop of ``network.train_step(xb, yb)`` over pre-cut batches;
* ``keras.fit``          ``model.fit`` (channels-last data, metrics=["accuracy"], as the seed lab);
* ``keras.tf_function``  a ``@tf.function`` step (GradientTape + ``optimizer.apply_gradients``)
                         over pre-cut batches;
* ``torch.eager``        a PyTorch eager loop (zero_grad, forward, cross_entropy, backward, step)
                         over pre-cut batches (skipped with a note when torch is not installed).

Each case: build the model, warm up (untimed) on a few batches including one
of the odd last-batch size, make one untimed *memory pass* (a full run with a
thread sampling this process's RSS every 2 ms), then ``--repeats`` timed runs
of ``--samples`` samples with ``time.perf_counter`` and the sampler off (its
thread competes for the GIL); the median samples/s is reported.  The timed
runs of one net and batch size go round-robin over the frameworks (one repeat
of each in turn; ``--sequential``: each framework's repeats back to back): on a
shared VM whose speed drifts by tens of percent over minutes, a slow stretch
then falls on every framework alike.  ``train MB``
is the memory pass's peak RSS above the RSS just before it, ``total MB`` the
peak above the RSS before the model was built (build, compile/trace and
warm-up included).  For ``ours.*`` the ``tracemalloc`` peak over the warm-up
batches is reported as well.
"""
import argparse
import math
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.ensure_repo_on_path()
import numpy as np  # noqa: E402

FRAMEWORKS = ("ours.fit", "ours.fit_1thread", "ours.train_step", "keras.fit", "keras.tf_function", "torch.eager")
OURS = ("ours.fit", "ours.fit_1thread", "ours.train_step")
BUSY_PCT = common.BUSY_PCT


# ----------------------------------------------------------------------------- runners
def _memory_pass(mem, run_once):
    """One untimed run of ``run_once`` with the RSS sampler on (baseline just before it).

    The timed runs come afterwards with the sampler off: its thread takes the
    GIL every few ms, which slowed our (Python-heavy) training loop by ~10 %.
    """
    mem.start_segment()
    run_once()


def _epochs(step, batches, epochs):
    """``step(xb, yb)`` over the pre-cut batches, ``epochs`` times; the last loss."""
    loss = None
    for _ in range(epochs):
        for xb, yb in batches:
            loss = step(xb, yb)
    return loss


def _time(case, mem, timing, run_once):
    """Record the memory figures of the finished PeakRSS block, then time the repeats."""
    case.train_mb = mem.segment_mb
    case.total_mb = mem.peak_mb
    timing.run(case, run_once)


def run_ours(case, X, y, timing, interval_s, variant, workers="auto"):
    plan = case.plan
    n, nw = plan.n_data, plan.n_warmup
    with common.PeakRSS(interval_s) as mem:
        net = common.build_ours(case.net, case.batch, workers)
        case.params = net.count_params()
        if variant == "fit":
            def once():
                hist = net.fit(X[:n], y[:n], epochs=plan.epochs, batch_size=case.batch, verbose=0, seed=0)
                return hist.history["loss"][-1]
            net.fit(X[:nw], y[:nw], epochs=1, batch_size=case.batch, verbose=0, seed=0)  # warm-up
        else:
            batches = [(X[a:b], y[a:b]) for a, b in plan.slices()]
            warm = [(X[a:b], y[a:b]) for a, b in plan.slices(nw)]

            def once():
                return float(_epochs(lambda xb, yb: net.train_step(xb, yb)[0], batches, plan.epochs))
            for xb, yb in warm:
                net.train_step(xb, yb)
        _memory_pass(mem, once)
    _time(case, mem, timing, once)
    # tracemalloc over the warm-up batches (separately: it slows allocation down)
    for layer in net.layers:
        layer.clear_cache()
    common.release_memory()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    if variant == "fit":
        net.fit(X[:nw], y[:nw], epochs=1, batch_size=case.batch, verbose=0, seed=0)
    else:
        for a, b in plan.slices(nw):
            net.train_step(X[a:b], y[a:b])
    case.tracemalloc_mb = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    case.threads = "; ".join(f"{p['library']} {p['version'] or ''} ({p['file']}) {p['threads']}"
                             for p in common.blas_info())


def run_keras_fit(case, X, y, timing, interval_s, tf):
    plan = case.plan
    n, nw = plan.n_data, plan.n_warmup
    Xk = np.ascontiguousarray(X.transpose(0, 2, 3, 1))  # NHWC
    with common.PeakRSS(interval_s) as mem:
        model = common.build_keras(case.net)
        case.params = common.count_params_keras(model)
        model.fit(Xk[:nw], y[:nw], batch_size=case.batch, epochs=1, verbose=0)  # warm-up (traces)

        def once():
            hist = model.fit(Xk[:n], y[:n], batch_size=case.batch, epochs=plan.epochs, verbose=0)
            return float(hist.history["loss"][-1])
        _memory_pass(mem, once)
    _time(case, mem, timing, once)
    case.threads = _tf_threads(tf)


def run_keras_step(case, X, y, timing, interval_s, tf):
    import keras  # noqa: PLC0415
    plan = case.plan
    Xk = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    with common.PeakRSS(interval_s) as mem:
        model = common.build_keras(case.net)
        case.params = common.count_params_keras(model)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        opt = keras.optimizers.SGD(learning_rate=common.LR)
        spec = [tf.TensorSpec([None, 28, 28, 1], tf.float32), tf.TensorSpec([None], tf.int64)]

        @tf.function(input_signature=spec)
        def step(xb, yb):
            with tf.GradientTape() as tape:
                logits = model(xb, training=True)
                loss = loss_fn(yb, logits)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        batches = [(tf.constant(Xk[a:b]), tf.constant(y[a:b])) for a, b in plan.slices()]
        for a, b in plan.slices(plan.n_warmup):
            step(tf.constant(Xk[a:b]), tf.constant(y[a:b]))

        def once():
            return float(_epochs(step, batches, plan.epochs).numpy())
        _memory_pass(mem, once)
    _time(case, mem, timing, once)
    case.threads = _tf_threads(tf)


def _tf_threads(tf):
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return f"TF intra={intra or 'default'}, inter={inter or 'default'}"


def run_torch(case, X, y, timing, interval_s, torch):
    plan = case.plan
    F = torch.nn.functional
    with common.PeakRSS(interval_s) as mem:
        torch.manual_seed(0)
        model = common.build_torch(case.net, torch)
        case.params = common.count_params_torch(model)
        opt = torch.optim.SGD(model.parameters(), lr=common.LR)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

        def step(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            return loss

        batches = [(Xt[a:b], yt[a:b]) for a, b in plan.slices()]
        for a, b in plan.slices(plan.n_warmup):
            step(Xt[a:b], yt[a:b])

        def once():
            return float(_epochs(step, batches, plan.epochs).item())
        _memory_pass(mem, once)
    _time(case, mem, timing, once)
    case.threads = f"torch intra={torch.get_num_threads()}, inter={torch.get_num_interop_threads()}"


def set_threads(n, tf, torch):
    """Give every framework ``n`` threads; returns notes on what could not be set."""
    notes = []
    try:
        import threadpoolctl  # noqa: PLC0415
        global _THREAD_LIMIT  # keep the limiter alive for the whole run
        _THREAD_LIMIT = threadpoolctl.threadpool_limits(limits=n)
    except ImportError:
        notes.append("--threads: threadpoolctl is not installed, NumPy's BLAS keeps its default "
                     "(set OPENBLAS_NUM_THREADS before starting Python instead)")
    if torch is not None:
        torch.set_num_threads(n)
    if tf is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError as exc:  # TF already initialised
            notes.append(f"--threads: TensorFlow kept its thread counts ({exc})")
    notes.append(f"--threads {n}: thread counts set for every framework")
    return notes


_THREAD_LIMIT = None


# ------------------------------------------------------------------------------ report
def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def result_rows(cases):
    """Table rows: framework, net, batch, samples/s, MBs, ratios of ours to this row."""
    by_key = {(c.framework, c.net, c.batch): c for c in cases}
    rows = []
    for c in cases:
        fit = by_key.get(("ours.fit", c.net, c.batch))
        stp = by_key.get(("ours.train_step", c.net, c.batch))
        sps = c.samples_per_s
        r_fit = ratio(fit.samples_per_s if fit else None, sps)
        r_stp = ratio(stp.samples_per_s if stp else None, sps)
        if c.error:
            rows.append([c.framework, c.net, str(c.batch), "error", "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([c.framework, c.net, str(c.batch), common.fmt_num(sps), common.fmt_num(c.train_mb, 1),
                     common.fmt_num(c.total_mb, 1), common.fmt_num(c.tracemalloc_mb, 1),
                     common.fmt_num(r_fit, 2), common.fmt_num(r_stp, 2), common.fmt_num(c.other_cpu_pct, 0)])
    return rows


HEADER = ["framework", "net", "batch", "samples/s", "train MB", "total MB", "traced MB",
          "ours.fit/this", "ours.step/this", "others CPU%"]


def verdicts(cases):
    """Per (net, batch): is ours faster than every other framework run here (and the issue's figures)?"""
    out = []
    keys = sorted({(c.net, c.batch) for c in cases}, key=lambda k: (common.NETS.index(k[0]), k[1]))
    for net, batch in keys:
        group = [c for c in cases if c.net == net and c.batch == batch and c.samples_per_s]
        ours = {c.framework: c.samples_per_s for c in group if c.framework in OURS}
        others = {c.framework: c.samples_per_s for c in group if c.framework not in OURS}
        for (fw, n, b), v in common.ISSUE_FIGURES.items():
            if n == net and b == batch:
                others[f"{fw} (issue figure)"] = float(v)
        if not ours or not others:
            continue
        best_name, best = max(others.items(), key=lambda kv: kv[1])
        for name, sps in ours.items():
            out.append({"net": net, "batch": batch, "ours": name, "samples_per_s": sps,
                        "fastest_other": best_name, "fastest_other_samples_per_s": best,
                        "ratio": sps / best, "faster_than_all": sps > best})
    return out


# -------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None,
                   help="samples per timed run (default 10000 = 2 passes over the 5,000 digits; --quick: 300)")
    p.add_argument("--batch-sizes", default="50,256", help="comma-separated batch sizes (default 50,256)")
    p.add_argument("--nets", default=",".join(common.NETS), help="comma-separated: seed_cnn,lenet5")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case, median reported "
                   "(default 3; --quick: 1)")
    p.add_argument("--warmup-batches", type=int, default=None, help="full warm-up batches (default 3; --quick: 1)")
    p.add_argument("--mem-interval-ms", type=float, default=2.0, help="RSS sampling interval (default 2 ms)")
    p.add_argument("--threads", type=int, default=None,
                   help="set every framework's thread count (BLAS via threadpoolctl, torch, TF intra-op); "
                        "default: leave each framework's own default")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for other processes to leave the CPUs alone, at the start "
                        "and before every timed repeat")
    p.add_argument("--busy-retries", type=int, default=0, metavar="N",
                   help=f"run a repeat again when other processes took > {common.BUSY_PCT:.0f}%% of the CPUs "
                        "meanwhile, at most N extra repeats per case")
    p.add_argument("--sequential", action="store_true",
                   help="time each framework's repeats back to back (default: round-robin over the "
                        "frameworks of a net and batch size, one repeat of each in turn)")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (tiny sample count)")
    p.add_argument("--json", default=None, help="also write all figures to this JSON file")
    a = p.parse_args(argv)
    a.samples = a.samples or (300 if a.quick else 10000)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.warmup_batches = a.warmup_batches if a.warmup_batches is not None else (1 if a.quick else 3)
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",") if b.strip()]
    return common.check_common_args(p, a, FRAMEWORKS)


def main(argv=None):
    args = parse_args(argv)
    notes = []
    tf = torch = None
    if any(f.startswith("keras.") for f in args.frameworks):
        tf, why = common.try_import_tensorflow()
        if tf is None:
            notes.append(f"Keras/TensorFlow skipped: not importable ({why})")
    if "torch.eager" in args.frameworks:
        torch, why = common.try_import_torch()
        if torch is None:
            notes.append(f"PyTorch skipped: not importable ({why})")
    import nn_from_scratch.backend as backend  # noqa: PLC0415
    backend.use("numpy")
    if args.threads:
        notes += set_threads(args.threads, tf, torch)

    X, y = common.load_data()
    if args.wait_quiet > 0:
        common.wait_until_quiet(args.wait_quiet)
    info = common.machine_info(tf=tf, torch=torch)
    common.print_machine_info(info)
    print(f"\nData: {X.shape[0]} MNIST digits {X.shape[1:]} float32 in [0, 1]; "
          f"{args.samples} samples per timed run, {args.repeats} repeat(s) (median), "
          f"warm-up {args.warmup_batches} batch(es) + 1 of the last batch's size; SGD lr {common.LR}")
    for n in notes:
        print("NOTE:", n)
    sys.stdout.flush()

    cases = []
    interval = args.mem_interval_ms / 1000
    timing = common.Timing(args.repeats, args.wait_quiet, args.busy_retries, interleave=not args.sequential)
    for net in args.nets:
        for batch in args.batch_sizes:
            plan = common.Plan(X.shape[0], args.samples, batch, args.warmup_batches)
            group = []
            for fw in args.frameworks:
                if fw.startswith("keras.") and tf is None or fw == "torch.eager" and torch is None:
                    continue
                case = common.Case(fw, net, batch, plan)
                try:
                    if fw == "ours.fit":
                        run_ours(case, X, y, timing, interval, "fit")
                    elif fw == "ours.fit_1thread":
                        run_ours(case, X, y, timing, interval, "fit", workers=1)
                    elif fw == "ours.train_step":
                        run_ours(case, X, y, timing, interval, "step")
                    elif fw == "keras.fit":
                        run_keras_fit(case, X, y, timing, interval, tf)
                    elif fw == "keras.tf_function":
                        run_keras_step(case, X, y, timing, interval, tf)
                    elif fw == "torch.eager":
                        run_torch(case, X, y, timing, interval, torch)
                except Exception as exc:  # report and go on with the other frameworks
                    case.error = f"{type(exc).__name__}: {exc}"
                cases.append(case)
                group.append(case)
            t0 = time.perf_counter()
            timing.flush()                  # the timed repeats (round-robin unless --sequential)
            for case in group:
                if case.error:
                    print(f"ERROR in {case.framework} {net} batch {batch}: {case.error}", file=sys.stderr)
                elif case.samples_per_s:
                    print(f"  {case.framework:<18} {net:<9} batch {batch:>4}: {case.samples_per_s:>10,.0f} "
                          f"samples/s (loss {case.final_loss:.4f})", flush=True)
            print(f"  ({len(group)} frameworks timed in {time.perf_counter() - t0:.1f} s)", flush=True)

    print()
    print(f"Training throughput, {args.samples} samples per timed run (median of {args.repeats} "
          f"undisturbed repeats where possible); ratios > 1 mean ours is faster")
    print(common.format_table(HEADER, result_rows(cases)))
    print("\ntrain MB: peak RSS during an untimed memory pass (the same run as a timed one) above the RSS "
          "just before it;\ntotal MB: peak RSS above the RSS before the model was built; traced MB: tracemalloc "
          "peak over the warm-up\nbatches (ours only); others CPU%: largest share of the CPUs other processes "
          "used during the timed repeats counted")
    busy = [c for c in cases if c.other_cpu_pct is not None and c.other_cpu_pct > BUSY_PCT]
    if busy:
        worst = max(c.other_cpu_pct for c in busy)
        print(f"WARNING: other processes used up to {worst:.0f}% of the CPUs during {len(busy)} of the "
              f"{len(cases)} timed runs; those figures are disturbed (run again on an idle machine)")
    threads = sorted({(c.framework.split(".")[0], c.threads) for c in cases if c.threads})
    for fw, t in threads:
        print(f"threads {fw}: {t}")

    ver = verdicts(cases)
    if ver:
        print("\nTarget: ours faster than every other framework (and the issue's figures, batch 50)")
        for v in ver:
            mark = "yes" if v["faster_than_all"] else "NO"
            print(f"  {v['net']:<9} batch {v['batch']:>4} {v['ours']:<16} {v['samples_per_s']:>9,.0f} vs "
                  f"{v['fastest_other']} {v['fastest_other_samples_per_s']:,.0f}: x{v['ratio']:.2f} -> {mark}")
    bad = [c for c in cases if c.error or (c.final_loss is not None and not math.isfinite(c.final_loss))]
    for c in bad:
        print(f"PROBLEM: {c.framework} {c.net} batch {c.batch}: {c.error or f'loss {c.final_loss}'}")
    for c in cases:
        if c.params is not None and c.params != common.NET_PARAMS[c.net]:
            print(f"PROBLEM: {c.framework} {c.net} has {c.params} parameters, expected {common.NET_PARAMS[c.net]}")

    if args.json:
        common.write_json(args.json, {
            "script": "bench_cpu.py", "argv": sys.argv[1:] if argv is None else list(argv),
            "machine": info, "notes": notes,
            "config": {"samples": args.samples, "timing": timing.as_dict(), "threads": args.threads,
                       "repeats": args.repeats, "warmup_batches": args.warmup_batches,
                       "batch_sizes": args.batch_sizes, "nets": args.nets, "frameworks": args.frameworks,
                       "lr": common.LR, "mem_interval_ms": args.mem_interval_ms},
            "results": [c.as_dict() for c in cases], "verdicts": ver,
            "issue_figures": [{"framework": k[0], "net": k[1], "batch": k[2], "samples_per_s": v}
                              for k, v in common.ISSUE_FIGURES.items()],
        })
        print(f"\nJSON written to {args.json}")
    return 1 if any(c.error for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
