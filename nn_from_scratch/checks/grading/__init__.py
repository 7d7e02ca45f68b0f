"""Grading student layers: in a sandbox against a trusted reference (a class), or in-process (one layer).

``python -m nn_from_scratch grade`` (``checks/grade.py``) is the command line; docs/grading.md the guide.
Modules: ``report`` (checks and reports), ``inprocess`` (one layer or model in this process), ``plan``
(reference, config, cases), ``protocol``/``child``/``sandbox`` (the submission's process),
``submission`` (one submission's checks), ``batch`` (a class and its outputs); ``checks/loading.py``
(specs and modules) is shared with the cross-check's command line.  Importing this package imports
nothing heavy (no TensorFlow): the sandboxed child imports ``child``.
"""
