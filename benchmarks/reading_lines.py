#!/usr/bin/env python3
"""How many lines a reader opens to follow a computation, in a checkout of either layout.

    python benchmarks/reading_lines.py [ROOT ...]      # default: this checkout

Two readings, each the files one must open, in the order one meets them:

* ``Convolution.forward``/``backward`` as the layer computes them (the layer's own code);
* ``fit`` on LeNet-5 with the engine on: the trainer's step down to every function that runs.

Printed per file: its lines (all, and code lines: neither blank nor comment nor docstring), and the
totals.  Three layouts: flat (``nn_from_scratch/*.py``); packages (``layers/``, ``engine/``,
``training/``, with ``engine/parallel.py`` one file); and packages with one job per file
(``engine/parallel/`` a package, the trainer's sums and checks, ``fit``'s set-up and the input
checks in modules of their own).  With forked workers (Linux), ``engine/parallel/threads.py`` is
not on the path; model files, the summary and the callbacks other than the default are not either.
"""
import ast
import io
import os
import sys
import tokenize

READINGS = {
    "flat": {
        "Convolution.forward/backward (the layer)": ["neurons.py", "conv_compute.py", "patches.py"],
        "fit on LeNet-5, engine on": ["network.py", "fusion.py", "phase_pool.py", "parallel.py", "neurons.py",
                                      "activations.py", "pooling.py", "losses.py", "kernels.py", "optimizers.py",
                                      "interfaces.py"],
    },
    "packages": {
        "Convolution.forward/backward (the layer)": ["layers/conv.py", "layers/geometry.py"],
        "fit on LeNet-5, engine on": ["training/network.py", "training/trainer.py", "engine/runner.py",
                                      "engine/fusion.py", "engine/phase_pool.py", "engine/settings.py",
                                      "engine/parallel.py", "engine/kernels.py", "layers/dense.py",
                                      "layers/activations.py", "layers/losses.py", "training/optimizers.py",
                                      "layers/base.py"],
    },
    "one job per file": {
        "Convolution.forward/backward (the layer)": ["layers/conv.py", "layers/geometry.py"],
        "fit on LeNet-5, engine on": ["training/network.py", "training/fit_setup.py", "training/inputs.py",
                                      "training/trainer.py", "training/epoch_sums.py", "training/watchdog.py",
                                      "engine/runner.py", "engine/fusion.py", "engine/phase_pool.py",
                                      "engine/settings.py", "engine/parallel/batch_split.py",
                                      "engine/parallel/policy.py", "engine/parallel/allowed.py",
                                      "engine/parallel/forked.py", "engine/parallel/sharding.py",
                                      "engine/parallel/identity.py", "engine/parallel/wire.py",
                                      "engine/parallel/memory.py", "engine/parallel/workers.py", "engine/kernels.py",
                                      "layers/dense.py", "layers/activations.py", "layers/losses.py",
                                      "training/optimizers.py", "layers/base.py"],
    },
}


def code_lines(text):
    """Lines holding code: not blank, not only a comment, not inside a docstring."""
    doc = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc)


def main(argv=None):
    roots = (argv if argv is not None else sys.argv[1:]) or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for root in roots:
        pkg = os.path.join(root, "nn_from_scratch")
        layout = ("one job per file" if os.path.isdir(os.path.join(pkg, "engine", "parallel")) else
                  "packages" if os.path.isdir(os.path.join(pkg, "layers")) else "flat")
        print(f"{root} ({layout} layout)")
        for reading, files in READINGS[layout].items():
            total = code = 0
            print(f"  {reading}:")
            for f in files:
                text = open(os.path.join(pkg, f)).read()
                n, c = text.count("\n"), code_lines(text)
                total, code = total + n, code + c
                print(f"    {f:34s} {n:5d} lines {c:5d} code")
            print(f"    {'total, ' + str(len(files)) + ' files':34s} {total:5d} lines {code:5d} code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
