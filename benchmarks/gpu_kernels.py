#!/usr/bin/env python3
"""What one training step launches on the GPU: kernel count, kernel time, wall time.

    python benchmarks/gpu_kernels.py                         # both nets, batch 64 and 256
    python benchmarks/gpu_kernels.py --nets lenet5 --batch-sizes 256 --steps 20

Runs ``NeuralNetwork.train_step`` of nn_from_scratch on CuPy (and, for comparison,
the same net's PyTorch eager step) under PyTorch's profiler, which records, through
CUPTI, every kernel and copy the process launches, whichever library launched it.
Per step it prints:

* ``wall ms``: the step's wall time (device synchronised before and after);
* ``kernels``: the number of kernels launched (memset/memcpy counted apart);
* ``kernel ms``: the sum of the kernels' own durations.

``kernel ms`` well under ``wall ms`` means the step waits on the host (Python and
launch overhead), not on the GPU's arithmetic; the top kernels by time follow.
Needs CuPy, a CUDA GPU and PyTorch with CUDA (present on the lent GPU machines).
"""
import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.ensure_repo_on_path()


def _events(prof):
    """``(kernels, copies)``: lists of (name, microseconds) of the device activities recorded."""
    kernels, copies = [], []
    for ev in prof.events():
        dev_type = str(getattr(ev, "device_type", ""))
        if "CUDA" not in dev_type:
            continue
        us = ev.time_range.elapsed_us() if hasattr(ev, "time_range") else ev.device_time
        name = ev.name
        (copies if name.lower().startswith(("memcpy", "memset")) else kernels).append((name, us))
    return kernels, copies


def _timed_ms(step, sync, steps):
    """Wall ms per call of ``steps`` calls of ``step``, the device synchronised before and after."""
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) * 1e3 / steps


def profile_steps(step, sync, steps):
    """Run ``step`` ``steps`` times under the profiler; per-step wall ms, kernel count, kernel ms, top kernels."""
    import torch.profiler as tp  # noqa: PLC0415
    for _ in range(3):            # warm-up: kernel compilation, handles
        step()
    sync()
    with tp.profile(activities=[tp.ProfilerActivity.CPU, tp.ProfilerActivity.CUDA]) as prof:
        wall = _timed_ms(step, sync, steps)
    wall_plain = _timed_ms(step, sync, steps)    # the profiler adds host overhead: again without it
    kernels, copies = _events(prof)
    by_name = {}
    for name, us in kernels:
        n, tot = by_name.get(name, (0, 0.0))
        by_name[name] = (n + 1, tot + us)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]
    return {"wall_ms": wall_plain, "wall_ms_profiled": wall, "kernels": len(kernels) / steps,
            "copies": len(copies) / steps, "kernel_ms": sum(us for _, us in kernels) / 1e3 / steps,
            "top": [(name[:70], n / steps, tot / 1e3 / steps) for name, (n, tot) in top]}


def _torch_step(torch, model, opt, x, y):
    """One eager PyTorch training step (as bench_gpu.py's torch.eager)."""
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default=",".join(common.NETS))
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import cupy  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import nn_from_scratch.backend as backend  # noqa: PLC0415
    backend.use("cupy")
    dev = cupy.cuda.Device()

    def sync():
        dev.synchronize()
        torch.cuda.synchronize()

    X, y = common.load_data()
    out = []
    rows = []
    for net_name in [n.strip() for n in a.nets.split(",") if n.strip()]:
        for b in [int(v) for v in a.batch_sizes.split(",") if v.strip()]:
            net = common.build_ours(net_name, b)
            like = net._param_like()
            xb = backend.to_device(X[:b], like=like)
            yb = backend.to_device(y[:b], like=like)
            ours = profile_steps(functools.partial(net.train_step, xb, yb), sync, a.steps)
            model = common.build_torch(net_name, torch).cuda()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            xt = torch.as_tensor(X[:b]).cuda()
            yt = torch.as_tensor(y[:b]).long().cuda()
            theirs = profile_steps(functools.partial(_torch_step, torch, model, opt, xt, yt), sync, a.steps)
            for who, r in (("ours", ours), ("torch", theirs)):
                rows.append([net_name, str(b), who, f"{r['wall_ms']:.3f}", f"{r['kernels']:.0f}",
                             f"{r['copies']:.0f}", f"{r['kernel_ms']:.3f}",
                             f"{100 * r['kernel_ms'] / r['wall_ms']:.0f}"])
                print(f"\n{net_name} batch {b} {who}: top kernels per step (count, ms)")
                for name, n, ms in r["top"]:
                    print(f"  {n:5.1f} {ms:8.4f}  {name}")
                out.append({"net": net_name, "batch": b, "who": who, **r})
    print("\nPer training step (device synchronised around the timed steps)")
    print(common.format_table(["net", "batch", "who", "wall ms", "kernels", "copies", "kernel ms", "busy %"], rows))
    if a.json:
        common.write_json(a.json, {"script": "gpu_kernels.py", "machine": common.machine_info(), "steps": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
