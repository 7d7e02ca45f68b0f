"""Every notebook in notebooks/ runs top to bottom, and is stored without outputs.

The code cells are executed in order in one namespace, in the notebook's folder
(as Jupyter does), with ``NN_FROM_SCRATCH_FAST=1`` (the notebooks then use
fewer test images and epochs).  Cells tagged ``skip-ci`` are skipped.  No
Jupyter needed: the .ipynb files are JSON.
"""
import glob
import json
import os
import warnings

import pytest

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def _source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_is_a_classroom_notebook():
    assert any(os.path.basename(p) == "lab8_revisited.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                "store notebooks with outputs cleared"
            assert not any(line.lstrip().startswith(("%", "!")) for line in _source(cell).splitlines()), \
                "no IPython magics: the cells must run as plain Python"
    assert os.path.getsize(path) < 100_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.setenv("NN_FROM_SCRATCH_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(os.path.dirname(path))
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    namespace = {"__name__": "__main__"}
    before = set(os.listdir("."))
    ran = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # e.g. matplotlib's "non-interactive backend"
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code" or "skip-ci" in cell.get("metadata", {}).get("tags", []):
                continue
            code = _source(cell)
            try:
                exec(compile(code, f"{os.path.basename(path)} cell {i}", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - the message points at the cell
                pytest.fail(f"{os.path.basename(path)}: cell {i} failed: {type(exc).__name__}: {exc}\n{code}")
            ran += 1
    assert ran >= 5
    assert set(os.listdir(".")) == before, "a notebook must not leave files behind"
    import matplotlib.pyplot as plt
    plt.close("all")
