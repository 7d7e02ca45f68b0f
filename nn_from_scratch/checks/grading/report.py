"""Results of grading: one ``GradeCheck`` per check and case, a ``GradeReport`` per target."""
from dataclasses import asdict, dataclass

__all__ = ["GradeCheck", "GradeReport"]


@dataclass
class GradeCheck:
    """One check of one case: ``passed``; where it failed (``layer``, ``quantity``), ``error`` the
    measured relative error (None when the student's code raised or did not run), ``message`` the
    explanation.  In batch grading also ``points``/``max_points`` and ``hidden`` (counted, not shown
    to the student)."""

    case: str
    check: str
    passed: bool
    layer: str = ""
    quantity: str = ""
    error: float = None
    message: str = ""
    points: float = None
    max_points: float = None
    hidden: bool = False

    @property
    def name(self):
        return f"{self.check} [{self.case}]"


class GradeReport:
    """All checks of a grading run: ``passed``, ``checks`` (``GradeCheck`` list), ``to_json()``."""

    def __init__(self, target, checks):
        self.target, self.checks = target, list(checks)

    @property
    def passed(self):
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self):
        return [c for c in self.checks if not c.passed]

    def to_json(self):
        return {"target": self.target, "passed": self.passed,
                "n_checks": len(self.checks), "n_failed": len(self.failures),
                "checks": [asdict(c) for c in self.checks]}

    def table(self, title=None, show_hidden=True):
        shown = [c for c in self.checks if show_hidden or not c.hidden]
        scored = any(c.max_points is not None for c in shown)
        head = ("case", "check", "result", "layer", "quantity", "rel. error") + (("points",) if scored else ())
        rows = [(c.case, c.check, "pass" if c.passed else "FAIL", c.layer, c.quantity,
                 "-" if c.error is None else f"{c.error:.1e}")
                + ((f"{c.points or 0:g}/{c.max_points:g}" if c.max_points is not None else "",) if scored else ())
                for c in shown]
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
        line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
        out = [title or f"Grading {self.target}", line(head), "-" * len(line(head))] + [line(r) for r in rows]
        for c in shown:
            if not c.passed:
                out.append(f"FAIL [{c.case}] {c.check}: {c.message}")
        return out

    def __str__(self):
        out = self.table()
        out.append(f"{'PASSED' if self.passed else 'FAILED'}: {len(self.checks) - len(self.failures)} of "
                   f"{len(self.checks)} checks passed")
        return "\n".join(out)
