"""Reports of the cross-check: readable tables (``str``), notebook HTML, ``passed``.

``CompareReport`` has one ``LayerRow`` per layer (and one for the loss); each
row holds a ``Check`` per compared quantity: the forward ``output``, ``dL/dx``
(the gradient with respect to the layer's input), ``dL/dW`` and ``dL/db``.
``first_failure`` is the first failing check in the order the computation runs:
outputs from the first layer to the loss, then the loss gradient, then every
layer from the last to the first (its parameter gradients, then dL/dx).  A bug
in one layer therefore shows up at that layer, even though every later number
that depends on it is wrong too.

``TrainingReport`` has the loss of both frameworks at every step and the
largest relative weight difference after every step.
"""
import html
import math
from dataclasses import dataclass, field

from .tolerances import Check

__all__ = ["Check", "LayerRow", "Failure", "CompareReport", "StepRecord", "TrainingReport"]

QUANTITIES = ("output", "dL/dx", "dL/dW", "dL/db")


def _fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.1e}"


@dataclass
class LayerRow:
    """The checks of one layer: ``index`` (its position; the loss comes after the
    last layer), ``name``, ``kind`` (class name), ``keras`` (the Keras layers that
    compute the same map), ``checks`` (quantity -> Check)."""

    index: int
    name: str
    kind: str
    keras: str
    checks: dict = field(default_factory=dict)

    @property
    def passed(self):
        return all(c.passed for c in self.checks.values())

    @property
    def label(self):
        return f"{self.name} ({self.kind})"


@dataclass
class Failure:
    """The first failing check: which layer (``index``, ``name``, ``kind``) and which quantity."""

    index: int
    name: str
    kind: str
    quantity: str
    check: Check
    keras: str = ""

    def __str__(self):
        return (f"layer {self.index} '{self.name}' ({self.kind}) [keras: {self.keras}]: "
                f"{self.check.describe()}")


class CompareReport:
    """Per-layer comparison of ours with Keras (see the module docstring).

    ``passed`` (bool), ``first_failure`` (a ``Failure`` or None), ``failures``
    (all, in computation order), ``rows`` (``LayerRow`` list), ``row(name)``;
    ``print(report)`` gives the table, notebooks render ``_repr_html_``;
    ``assert_passed()`` raises AssertionError with the table.
    """

    def __init__(self, rows, order, tolerances, mode, target, batch, dtype):
        self.rows = list(rows)
        self._order = list(order)      # (row position, quantity) in computation order
        self.tolerances = dict(tolerances)
        self.mode, self.target, self.batch, self.dtype = mode, target, batch, dtype

    @property
    def failures(self):
        out = []
        for pos, q in self._order:
            row = self.rows[pos]
            c = row.checks.get(q)
            if c is not None and not c.passed:
                out.append(Failure(row.index, row.name, row.kind, q, c, row.keras))
        return out

    @property
    def first_failure(self):
        f = self.failures
        return f[0] if f else None

    @property
    def passed(self):
        return all(row.passed for row in self.rows)

    def row(self, name):
        """The row of the layer called ``name`` (or at position ``name`` when an int)."""
        if isinstance(name, int):
            return self.rows[name]
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in this report; layers: {[r.name for r in self.rows]}")

    __getitem__ = row

    def assert_passed(self):
        if not self.passed:
            raise AssertionError(f"Keras cross-check failed\n{self}")

    def worst(self, quantity):
        """The largest relative error over all layers for ``quantity``."""
        vals = [r.checks[quantity].max_rel for r in self.rows if quantity in r.checks]
        return max(vals) if vals else 0.0

    # ---------------------------------------------------------------- text
    def _title(self):
        status = "PASSED" if self.passed else "FAILED"
        mode = {"auto": "outputs end to end, gradients per layer", "chained": "end to end",
                "isolated": "every layer fed our input and upstream gradient"}.get(self.mode, self.mode)
        return f"Keras cross-check ({mode}; {self.target}), batch {self.batch}, {self.dtype}: {status}"

    def _legend(self):
        return (f"cells: rel (abs), rel = max|ours - keras| / max|keras|; tolerances: output "
                f"{self.tolerances['forward']:.0e}, gradients {self.tolerances['gradient']:.0e}; "
                f"'!' = above tolerance")

    @property
    def quantities(self):
        """The table's columns: output, dL/dx, dL/dW, dL/db, then other parameters' gradients
        (a layer of one's own may call its parameters otherwise)."""
        extra = [q for r in self.rows for q in r.checks if q not in QUANTITIES]
        return list(QUANTITIES) + list(dict.fromkeys(extra))

    def __str__(self):
        head = ["#", "layer (type)"] + self.quantities
        lines = []
        for r in self.rows:
            cells = [str(r.index), r.label]
            for q in self.quantities:
                c = r.checks.get(q)
                cells.append("-" if c is None else f"{_fmt(c.max_rel)} ({_fmt(c.max_abs)}){'' if c.passed else ' !'}")
            lines.append(cells)
        widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [self._title(), self._legend(), fmt(head), "-" * len(fmt(head))]
        out += [fmt(c) for c in lines]
        fails = self.failures
        if fails:
            out.append(f"first failure: {fails[0]}")
            if len(fails) > 1:
                out.append(f"({len(fails) - 1} more failing check(s) after it; later numbers depend on it)")
        return "\n".join(out)

    def __repr__(self):
        ff = self.first_failure
        return (f"<CompareReport {'passed' if self.passed else 'FAILED'}: {len(self.rows)} rows"
                + (f", first failure at layer {ff.index} {ff.name!r} {ff.quantity}>" if ff else ">"))

    def _repr_html_(self):
        e = html.escape
        color = "#1a7f37" if self.passed else "#cf222e"
        parts = [f"<div><b style='color:{color}'>{e(self._title())}</b><br><small>{e(self._legend())}</small>",
                 "<table><thead><tr><th>#</th><th>layer (type)</th><th>keras</th>"
                 + "".join(f"<th>{e(q)}</th>" for q in self.quantities) + "</tr></thead><tbody>"]
        for r in self.rows:
            tds = [f"<td>{r.index}</td><td>{e(r.label)}</td><td><small>{e(r.keras)}</small></td>"]
            for q in self.quantities:
                c = r.checks.get(q)
                if c is None:
                    tds.append("<td>-</td>")
                    continue
                style = "" if c.passed else " style='background:#ffebe9;color:#cf222e'"
                tip = e(c.describe())
                tds.append(f"<td{style} title='{tip}'>{_fmt(c.max_rel)} <small>({_fmt(c.max_abs)})</small></td>")
            parts.append("<tr>" + "".join(tds) + "</tr>")
        parts.append("</tbody></table>")
        ff = self.first_failure
        if ff is not None:
            parts.append(f"<p style='color:#cf222e'>first failure: {e(str(ff))}</p>")
        parts.append("</div>")
        return "".join(parts)


@dataclass
class StepRecord:
    """One training step: both losses (on the batch, before the update), their relative
    difference, and the largest relative weight difference after the update (``worst_weight``)."""

    step: int
    loss_ours: float
    loss_keras: float
    loss_rel: float
    weight_rel: float
    worst_weight: str


class TrainingReport:
    """Ours and Keras trained side by side on identical batches (see ``compare_training``).

    ``steps``: a ``StepRecord`` per step; ``weights``: per weight the ``Check`` at
    the step where it differed most; ``passed``; ``first_failure`` (the first
    step whose loss or weights differ by more than the tolerance, or None);
    ``losses_ours``/``losses_keras``; ``max_weight_rel``.
    """

    #: a step is a "sudden jump" when its weight difference grew by this factor in one step ...
    JUMP_FACTOR = 20.0
    #: ... from below tol / JUMP_FLOOR (i.e. after clean steps)
    JUMP_FLOOR = 30.0

    def __init__(self, steps, weights, tol, optimizer, keras_optimizer, batch_size, dtype, lockstep=False):
        self.steps, self.weights = list(steps), list(weights)
        self.tol, self.optimizer, self.keras_optimizer = tol, optimizer, keras_optimizer
        self.batch_size, self.dtype, self.lockstep = batch_size, dtype, lockstep

    @property
    def sudden_jump(self):
        """The first step (after step 1) whose weight difference jumped ``JUMP_FACTOR``-fold from a
        clean value: the signature of a ReLU/max-pool kink taken differently by the two models
        (a formula bug shows from step 1 instead).  None if there is none."""
        for prev, cur in zip(self.steps, self.steps[1:]):
            if prev.weight_rel < self.tol / self.JUMP_FLOOR and cur.weight_rel > self.JUMP_FACTOR * max(
                    prev.weight_rel, 1e-12):
                return cur
        return None

    @property
    def losses_ours(self):
        return [s.loss_ours for s in self.steps]

    @property
    def losses_keras(self):
        return [s.loss_keras for s in self.steps]

    @property
    def max_weight_rel(self):
        return max((s.weight_rel for s in self.steps), default=0.0)

    @property
    def max_loss_rel(self):
        return max((s.loss_rel for s in self.steps), default=0.0)

    @property
    def passed(self):
        return bool(self.steps) and self.first_failure is None

    @property
    def first_failure(self):
        for s in self.steps:
            if not (s.loss_rel <= self.tol and s.weight_rel <= self.tol):
                return s
        return None

    def _title(self):
        status = "PASSED" if self.passed else "FAILED"
        run = "lockstep (weights re-synced before every step)" if self.lockstep else "free run"
        return (f"Keras training cross-check, {run}, {len(self.steps)} steps, batch {self.batch_size}, "
                f"{self.dtype}, {self.optimizer!r} vs keras {self.keras_optimizer}: {status}")

    def _legend(self):
        return (f"rel = max|ours - keras| / max|keras| per weight (after the step) and for the loss (on the "
                f"step's batch, before the update); tolerance {self.tol:.0e}")

    def _shown_steps(self, max_rows=12):
        n = len(self.steps)
        if n <= max_rows:
            return list(range(n))
        keep = {0, 1, n - 1}
        k = max_rows - len(keep)
        keep |= {round(i * (n - 1) / (k + 1)) for i in range(1, k + 1)}
        for special in (self.first_failure, self.sudden_jump):
            if special is not None:
                keep |= {special.step - 2, special.step - 1} - {-1}
        return sorted(keep)

    def __str__(self):
        out = [self._title(), self._legend()]
        head = ("step", "loss ours", "loss keras", "loss rel", "max weight rel", "worst weight")
        rows = [(str(s.step), f"{s.loss_ours:.6f}", f"{s.loss_keras:.6f}", _fmt(s.loss_rel),
                 _fmt(s.weight_rel) + ("" if s.weight_rel <= self.tol else " !"), s.worst_weight)
                for s in (self.steps[i] for i in self._shown_steps())]
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out += [fmt(head), "-" * len(fmt(head))] + [fmt(r) for r in rows]
        out.append("per weight, worst step:")
        for c in self.weights:
            out.append(f"  {c.describe()}")
        ff = self.first_failure
        if ff is not None:
            out.append(f"first failure at step {ff.step}: loss rel {_fmt(ff.loss_rel)}, weight rel "
                       f"{_fmt(ff.weight_rel)} ({ff.worst_weight})")
            jump = self.sudden_jump
            if jump is not None and jump.step <= ff.step:
                before = self.steps[jump.step - 2].weight_rel
                out.append(f"note: the difference jumped at step {jump.step} ({_fmt(before)} -> "
                           f"{_fmt(jump.weight_rel)}, {jump.worst_weight}) after clean steps: typical of a ReLU "
                           "or max-pool input within rounding of its kink taken differently by the two models, "
                           "then amplified by training; rerun with lockstep=True (CLI: --lockstep) to judge every "
                           "update from identical weights")
        return "\n".join(out)

    def __repr__(self):
        return (f"<TrainingReport {'passed' if self.passed else 'FAILED'}: {len(self.steps)} steps, "
                f"max weight rel {self.max_weight_rel:.2e}, max loss rel {self.max_loss_rel:.2e}>")

    def _repr_html_(self):
        e = html.escape
        color = "#1a7f37" if self.passed else "#cf222e"
        parts = [f"<div><b style='color:{color}'>{e(self._title())}</b><br><small>{e(self._legend())}</small>",
                 "<table><thead><tr><th>step</th><th>loss ours</th><th>loss keras</th><th>loss rel</th>"
                 "<th>max weight rel</th><th>worst weight</th></tr></thead><tbody>"]
        for i in self._shown_steps():
            s = self.steps[i]
            bad = not (s.loss_rel <= self.tol and s.weight_rel <= self.tol)
            style = " style='background:#ffebe9'" if bad else ""
            parts.append(f"<tr{style}><td>{s.step}</td><td>{s.loss_ours:.6f}</td><td>{s.loss_keras:.6f}</td>"
                         f"<td>{_fmt(s.loss_rel)}</td><td>{_fmt(s.weight_rel)}</td><td>{e(s.worst_weight)}</td></tr>")
        parts.append("</tbody></table><ul>")
        for c in self.weights:
            parts.append(f"<li>{e(c.describe())}</li>")
        parts.append("</ul></div>")
        return "".join(parts)
