"""``Table``: a small tidy table (named columns, one row per record), printable, to pandas."""
import numpy as np

__all__ = ["Table"]


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v != v:
            return "nan"
        if v == int(v) and abs(v) < 1e6:
            return f"{v:.1f}" if abs(v) >= 1 or v == 0 else f"{v:.6g}"
        return f"{v:.6g}" if abs(v) >= 1e-4 else f"{v:.3e}"
    return str(v)


class Table:
    """Rows of records with the same named columns.

    ``len(t)``, ``t[i]`` (a row as a dict), ``t["H"]`` (a column as a NumPy array),
    iteration over the rows (dicts), ``t.records()``, ``t.to_pandas()`` (when pandas is
    installed), ``str(t)`` (an aligned text table).
    """

    def __init__(self, columns, rows):
        self.columns = tuple(columns)
        self.rows = [tuple(r) for r in rows]
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"Table: a row has {len(r)} values for {len(self.columns)} columns")

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.records())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.columns:
                raise KeyError(f"no column {key!r}; columns: {list(self.columns)}")
            j = self.columns.index(key)
            return np.array([r[j] for r in self.rows])
        return dict(zip(self.columns, self.rows[key]))

    def records(self):
        return [dict(zip(self.columns, r)) for r in self.rows]

    def to_pandas(self):
        try:
            import pandas as pd  # noqa: PLC0415 - optional
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows, columns=list(self.columns))

    def to_text(self, max_rows=None):
        rows = self.rows if max_rows is None or len(self.rows) <= max_rows else self.rows[:max_rows]
        cells = [list(self.columns)] + [[_fmt(v) for v in r] for r in rows]
        w = [max(len(c[j]) for c in cells) for j in range(len(self.columns))]
        lines = ["  ".join(c[j].rjust(w[j]) for j in range(len(w))) for c in cells]
        lines.insert(1, "  ".join("-" * x for x in w))
        if len(rows) < len(self.rows):
            lines.append(f"... ({len(self.rows)} rows)")
        return "\n".join(lines)

    def __str__(self):
        return self.to_text()

    def __repr__(self):
        return self.to_text(max_rows=30)
