"""Analysis tools that look inside a trained network (the seed documents' three tools).

Each tool is a module of its own, imported by name so that importing the package
costs nothing until a tool is used::

    from nn_from_scratch.analysis import permutation   # which inputs matter (docs/analysis/permutation.md)
    from nn_from_scratch.analysis import separation    # class separation per layer (docs/analysis/separation.md)
    from nn_from_scratch.analysis import curvature     # K-FAC / EKFAC factors (docs/analysis/curvature.md)

They use the trainer and the layers' public interface only; nothing in the layers
imports from here.
"""
