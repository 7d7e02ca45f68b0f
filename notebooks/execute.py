#!/usr/bin/env python3
"""Execute the classroom notebooks in a real Jupyter kernel and store them with their outputs.

    python notebooks/execute.py                       # every notebook in notebooks/, full mode
    python notebooks/execute.py lab8_revisited.ipynb  # one (a name in notebooks/ or a path)
    python3 dev.py notebooks [NAMES]                  # the same, after setting up .venv

Each notebook runs top to bottom in a fresh ``ipykernel`` kernel (through
``nbclient``; no Jupyter server needed) whose Python is this interpreter,
started in the notebook's folder with this checkout first on ``PYTHONPATH``
and without ``MPLBACKEND`` (so the kernel uses its inline backend and the
figures are stored as ``image/png``).  A cell's printed output is stored as one
stdout and one stderr text each, with progress bars reduced to their last state.  Full mode (``NN_FROM_SCRATCH_FAST``
unset) is what is committed; ``--fast`` runs the quick version the test suite
runs, without writing anything.

The stored notebook records, in ``metadata["nn_from_scratch"]``, the SHA-256 of
every code cell's source at execution time and the mode: the test suite
(``tests/test_notebooks.py``) uses them to tell a notebook whose outputs are
current from one edited after it was executed.  The file is written atomically.
"""
import argparse
import glob
import hashlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: Cells with this tag are not executed by the test suite (fast mode); full mode runs them.
SKIP_TAG = "skip-ci"
META_KEY = "nn_from_scratch"


def source_of(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def source_hash(cell):
    return hashlib.sha256(source_of(cell).encode("utf-8")).hexdigest()


def notebooks(names=None):
    """Paths of the named notebooks (names in notebooks/ or paths), or of all of them."""
    if not names:
        return sorted(glob.glob(os.path.join(HERE, "*.ipynb")))
    paths = []
    for name in names:
        path = name if os.path.exists(name) else os.path.join(HERE, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no notebook {name!r} (looked for {os.path.abspath(name)} and {path})")
        paths.append(os.path.abspath(path))
    return paths


def kernel_environment(fast):
    """The kernel's environment: this checkout first on PYTHONPATH, no MPLBACKEND, the mode."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)          # ipykernel then selects matplotlib's inline backend
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if fast:
        env["NN_FROM_SCRATCH_FAST"] = "1"
    else:
        env.pop("NN_FROM_SCRATCH_FAST", None)
    return env


def this_python_kernel():
    """A kernel manager for an ipykernel kernel running THIS interpreter (``sys.executable``).

    The kernel spec comes from ipykernel itself (``ipykernel.kernelspec.get_kernel_dict``),
    not from whatever ``python3`` spec is installed: on a fresh CI virtual environment,
    or a machine with other Pythons' specs, the kernel still imports the packages of
    the environment running the tests.
    """
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict  # noqa: PLC0415
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: PLC0415
    from jupyter_client.manager import KernelManager  # noqa: PLC0415

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def execute(path, fast=False, timeout=900):
    """Run the notebook at ``path`` in a fresh kernel; return ``(notebook, seconds)``.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell and its
    traceback) when a cell fails.  Nothing is written.
    """
    import nbclient  # noqa: PLC0415
    import nbformat  # noqa: PLC0415

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, km=this_python_kernel(), timeout=timeout, kernel_name="python3", coalesce_streams=True,
        skip_cells_with_tag=SKIP_TAG if fast else "nn-from-scratch-never-skip",
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    start = time.perf_counter()
    client.execute(env=kernel_environment(fast))      # passed on to the kernel's start
    return nb, time.perf_counter() - start


def record(nb, fast):
    """Store the per-cell source hashes and the mode in the notebook's metadata."""
    nb.metadata[META_KEY] = {
        "executed_by": "notebooks/execute.py",
        "fast": bool(fast),
        "code_cell_sha256": [source_hash(c) for c in nb.cells if c["cell_type"] == "code"],
    }
    return nb


def write_atomic(nb, path):
    """Write the notebook whole or not at all, with ordinary permissions (``nn_from_scratch.atomic``)."""
    import nbformat  # noqa: PLC0415
    from nn_from_scratch.atomic import atomic_open  # noqa: PLC0415
    with atomic_open(path, "w") as f:
        nbformat.write(nb, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="notebooks (default: all in notebooks/)")
    p.add_argument("--fast", action="store_true",
                   help="run with NN_FROM_SCRATCH_FAST=1 as the tests do, and write nothing")
    p.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    args = p.parse_args(argv)
    status = 0
    for path in notebooks(args.names):
        name = os.path.basename(path)
        try:
            nb, seconds = execute(path, fast=args.fast, timeout=args.timeout)
        except Exception as exc:  # noqa: BLE001 - reported per notebook
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        images = sum("image/png" in o.get("data", {}) for c in nb.cells if c["cell_type"] == "code"
                     for o in c.get("outputs", []))
        if args.fast:
            print(f"ran {name} (fast) in {seconds:.1f} s, {images} figures; not written")
        else:
            write_atomic(record(nb, fast=False), path)
            print(f"executed {name} in {seconds:.1f} s, {images} figures; written")
    return status


if __name__ == "__main__":
    sys.exit(main())
