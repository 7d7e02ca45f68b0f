"""Analysis tools that look inside a trained network (the seed documents' three tools).

Each tool is a module of its own, imported by name so that importing the package
costs nothing until a tool is used::

    from nn_from_scratch.analysis import permutation   # which inputs matter (seed 000)
    from nn_from_scratch.analysis import separation    # class separation per layer (seed 003)
    from nn_from_scratch.analysis import curvature     # K-FAC / EKFAC factors (seed 004)

They use the trainer and the layers' public interface only; nothing in the layers
imports from here.
"""
