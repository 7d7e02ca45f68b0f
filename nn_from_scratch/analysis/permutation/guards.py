"""Checks around a permutation test's replicates (docs/analysis/permutation.md, "parallel runs,
checkpoints, reproducibility"): the memory the results will need, refused before anything runs
when it is out of reach; and replicates whose training diverged, named in a warning."""
import warnings

from ...training.history import TrainingWarning
from .checkpoints import task_name

__all__ = ["MAX_RESULT_BYTES", "PER_REPLICATE_BYTES", "check_result_memory", "warn_diverged"]

MAX_RESULT_BYTES = 2 * 1024 ** 3        # the results of one test held in memory, at most
PER_REPLICATE_BYTES = 512               # bookkeeping per replicate (its key, digest, array header)


def check_result_memory(n_permutations, n_tasks, values_per_task, null_values, where="permutation_test"):
    """Refuse a test whose replicates' statistics would not fit in ``MAX_RESULT_BYTES``."""
    need = n_tasks * (PER_REPLICATE_BYTES + 8 * values_per_task) + 8 * null_values
    if need > MAX_RESULT_BYTES:
        raise ValueError(f"{where}: n_permutations={n_permutations} means {n_tasks} trained networks whose statistics "
                         f"would need {need / 1024 ** 3:.1f} GiB of memory (limit {MAX_RESULT_BYTES / 1024 ** 3:g} "
                         "GiB), and as many trainings; use fewer permutations (a p-value at level alpha needs "
                         "B + 1 >= 1/alpha, a few thousand at most) or sequential=h with null='conditional'")


def warn_diverged(diverged, observed, used=None, where="permutation_test"):
    """A ``TrainingWarning`` naming the replicates whose training diverged (NaN/Inf loss or statistic).

    ``diverged``: their tasks; ``observed``: the observed network's task; ``used``: a predicate,
    the replicates the p-values use (default all)."""
    bad = sorted((t for t in diverged if used is None or used(t)), key=task_name)
    if not bad:
        return
    obs = observed in bad
    nulls = [t for t in bad if t != observed]
    parts = []
    if obs:
        parts.append("the observed network's training diverged (NaN/Inf loss or statistic): its statistic and the "
                     "p-values are not meaningful")
    if nulls:
        names = ", ".join(task_name(t) for t in nulls[:20]) + (f", ... ({len(nulls) - 20} more)" if len(nulls) > 20
                                                                 else "")
        parts.append(f"{len(nulls)} null replicate(s) diverged in training (NaN/Inf loss or statistic): {names}; "
                     "their statistics are used as computed (a NaN makes the p-values it enters NaN)")
    warnings.warn(f"{where}: " + "; ".join(parts) + " - a NaN/Inf loss means the recipe is unstable on this data "
                  "(lower the learning rate, clip gradients, or change the initialization); a NaN/Inf statistic "
                  "with finite losses comes from the output= being differentiated", TrainingWarning, stacklevel=3)
