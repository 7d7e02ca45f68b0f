"""Command line: ``python -m nn_from_scratch <command> [options]``.

Commands:
    train        train the seed lab's CNN on MNIST (the main job)
    crosscheck   compare the seed lab's CNN (or --model FILE.npz) with Keras, layer by layer and over training
    grade        grade a class (--submissions DIR, each in a sandbox, against --reference), one layer
                 (--layer module:Class) or a saved model (--model file.npz); docs/grading.md
    permutation-test   which pixels matter to the seed's CNN, with permutation p-values (analysis/permutation)
    separation   class separation (Henze-Penrose) at every layer: a CNN before/after training, or --model FILE.npz
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
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
