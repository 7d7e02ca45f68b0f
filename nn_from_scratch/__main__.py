"""Command line: ``python -m nn_from_scratch <command> [options]``.

Commands:
    train        train the seed lab's CNN on MNIST (the main job)
    crosscheck   compare the seed lab's CNN (or --model FILE.npz) with Keras, layer by layer and over training
    grade        grade a class (--submissions DIR, each in a sandbox, against --reference), one layer
                 (--layer module:Class) or a saved model (--model file.npz); docs/grading.md
    permutation-test   which pixels matter to the seed's CNN, with permutation p-values (analysis/permutation)
    separation   class separation (Henze-Penrose) at every layer: a CNN before/after training, or --model FILE.npz

Exit status (every command): 0 done, 1 a check failed, 2 the command could not run (a bad
argument, a file it cannot read or write, a missing optional dependency: one line on stderr,
no traceback; ``nn_from_scratch/cli_errors.py``).
"""
import importlib
import sys

COMMANDS = {
    "train": "nn_from_scratch.train",
    "crosscheck": "nn_from_scratch.checks.crosscheck",
    "grade": "nn_from_scratch.checks.grade",
    "permutation-test": "nn_from_scratch.analysis.permutation_cli",
    "separation": "nn_from_scratch.analysis.separation.cli",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        if argv and argv[0] in ("-h", "--help"):
            return 0
        print("python -m nn_from_scratch: error: " + (f"unknown command {argv[0]!r}" if argv else "no command")
              + f"; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .cli_errors import run  # noqa: PLC0415

    prog = f"python -m nn_from_scratch {argv[0]}"
    return run(lambda rest: importlib.import_module(COMMANDS[argv[0]]).main(rest), argv[1:], prog)


if __name__ == "__main__":
    sys.exit(main())
