"""Permutation-based hypothesis tests for networks: which inputs matter, with p-values.

The user's guide is ``docs/analysis/permutation.md``: which test answers which question,
the algorithms, their validity, the sampler, the sequential p-values, the CLI.

Statistics (``analysis/gradients.py``): with ``D_ij = d f(x_i) / d x_j`` (``input_gradients``),

* association   ``T_j = (1/N) sum_i D_ij^2``                 (per group: ``T_G = sum_{j in G} T_j``)
* nonlinearity  ``V_j = (1/N) sum_i (D_ij - mean_i D_ij)^2``

``permutation_test(build, X, y, fit_kwargs, ..., null="labels" | "conditional")``:

* ``null="labels"``, association (``result.scope == "global"``): ``B`` networks retrained on
  ``(X, y[pi_b])``, one fixed permutation each.  Exact for the GLOBAL null ``y`` independent
  of all of ``X``; its per-input p-values do not localise (a network trained on shuffled
  labels has small input derivatives everywhere, so every input of a network that learnt
  anything beats them).  One joint null for all inputs: max-T applies.
* ``null="labels"``, nonlinearity (scope ``"nonlinearity"``): per feature, residual
  permutation under a model linear in ``x_j`` (Freedman & Lane); ``H0_j``: f is linear in ``x_j``.
* ``null="conditional"`` (scope ``"conditional"``): a conditional randomization test with
  refitting per group of inputs (``conditional.py``): the group redrawn given all other inputs
  (``samplers.py``), ``y`` kept; ``H0_G``: ``y`` independent of ``X_G`` given the other inputs.
  This is the test that says which inputs (patches) matter.  Holm or BH across groups; no max-T.

The package, one concept per module: ``pvalues`` (p-values, sequential p-values,
adjustments), ``result`` (``PermutationTestResult``), ``groups`` (``patch_groups``),
``samplers``, ``replicates`` (seeds, training one replicate), ``recipe`` (per-replicate callbacks, the
recipe's description), ``checkpoints``, ``parallel`` (workers, deadlines), ``guards`` (memory,
diverged replicates), ``conditional`` (the conditional test), ``core`` (``permutation_test``).
"""
from ..gradients import (OUTPUT_MODES, GradientMoments, association_statistic, gradient_statistics, input_gradients,
                         iter_input_gradients, nonlinearity_statistic)
from .checkpoints import CheckpointError
from .core import NULLS, permutation_test
from .groups import patch_groups
from .parallel import BACKENDS, ReplicateDeadlineWarning
from .pvalues import (METHODS, benjamini_hochberg, holm, max_t, permutation_p_values, sequential_p_values,
                      smallest_adjusted_p)
from .replicates import replicate_seeds, train_replicate
from .result import SCOPES, STATEMENTS, STATISTICS, PermutationTestResult
from .samplers import SAMPLERS, marginal_sampler, residual_sampler

__all__ = ["input_gradients", "iter_input_gradients", "association_statistic", "nonlinearity_statistic",
           "gradient_statistics", "GradientMoments", "permutation_test", "PermutationTestResult",
           "permutation_p_values", "holm", "benjamini_hochberg", "max_t", "replicate_seeds", "train_replicate",
           "OUTPUT_MODES", "STATISTICS", "BACKENDS", "METHODS", "CheckpointError",
           "NULLS", "SCOPES", "STATEMENTS", "SAMPLERS", "patch_groups", "sequential_p_values", "smallest_adjusted_p",
           "residual_sampler", "marginal_sampler", "ReplicateDeadlineWarning"]
