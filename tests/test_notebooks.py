"""Every notebook in notebooks/ is stored executed, runs in a real kernel, and shows its figures.

How the notebooks are checked
-----------------------------
* **Stored executed** (``test_notebook_is_stored_executed``, no kernel): every
  code cell has an execution count, numbered 1, 2, 3, ... in order (one run,
  top to bottom, in one kernel), no cell stored an error, no figure was stored
  as the text ``<Figure size ...>`` instead of a picture, and a notebook that
  plots stores ``image/png`` outputs (so a web view shows them).
* **Current** (same test): ``notebooks/execute.py`` records the SHA-256 of every
  code cell's source when it executes and stores a notebook; a cell edited
  afterwards no longer matches its hash and the test names it.  The mode must
  be the full one (``NN_FROM_SCRATCH_FAST`` unset), the one students read.
* **Runs in a kernel** (``test_notebook_executes_in_a_kernel``): the notebook is
  executed with ``nbclient`` in a fresh ``ipykernel`` kernel running this
  interpreter (``sys.executable``, see ``test_kernel_is_this_interpreter``),
  in the notebook's folder, with ``NN_FROM_SCRATCH_FAST=1`` (fewer images and
  epochs) and without ``MPLBACKEND`` (so figures go through the kernel's inline
  backend, as in Jupyter).  It fails when a cell raises (naming the cell), when
  a notebook that plots produces no ``image/png`` output, when it leaves files
  behind, or when the kinds of output of a cell differ from the stored ones
  (e.g. a cell that stored a figure no longer makes one with the current code:
  the stored outputs are stale).  The comparison uses, per cell, the set of
  output kinds: ``stdout``, ``error``, and each MIME type of a display or a
  result (``text/plain`` only when it is the only one); ``stderr`` is left out
  (warnings depend on the machine).  Cells tagged ``skip-ci`` are not executed
  here (full mode runs them).

To (re)execute and store notebooks: ``python notebooks/execute.py [NAME.ipynb ...]``
(or ``python3 dev.py notebooks``).  No IPython magics: the cells are plain Python.
"""
import glob
import importlib.util
import os
import re
import sys

import pytest

pytest.importorskip("matplotlib")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
IDS = [os.path.basename(p) for p in NOTEBOOKS]
MAX_BYTES = 3_000_000
#: Source that draws a figure (a notebook containing it must show at least one image/png).
PLOTS = re.compile(r"\b(plot_\w+|show_images|plt\.\w+|imshow|subplots)\s*\(")

_spec = importlib.util.spec_from_file_location("notebook_execute", os.path.join(ROOT, "notebooks", "execute.py"))
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

HOW = "re-execute and store it with: python notebooks/execute.py {name}"


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _kinds(cell):
    """The set of output kinds of a code cell (see the module docstring)."""
    kinds = set()
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            if out.name == "stdout":
                kinds.add("stdout")
        elif out.output_type == "error":
            kinds.add("error")
        else:
            mimes = set(out.get("data", {}))
            rich = mimes - {"text/plain"}
            kinds.update(f"{out.output_type}:{m}" for m in (rich or mimes))
    return kinds


def _figure_text_outputs(nb):
    """Cells whose output is a figure printed as text (``<Figure size ...>``) with no picture."""
    bad = []
    for i, cell in enumerate(_code_cells(nb)):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if str(data.get("text/plain", "")).startswith("<Figure size") and "image/png" not in data:
                bad.append(i)
    return bad


def _images(nb):
    return sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.get("outputs", []))


def _plots(nb):
    return any(PLOTS.search(execute.source_of(c)) for c in _code_cells(nb))


def test_the_classroom_notebooks_are_there():
    expected = {"lab8_revisited.ipynb", "write_your_own_layer.ipynb", "lab_gradients.ipynb", "lab_convolution.ipynb",
                "lab_optimizers.ipynb", "lab_regularisation.ipynb"}
    assert expected <= set(IDS), sorted(expected - set(IDS))


def test_kernel_is_this_interpreter(tmp_path):
    """The kernel the tests use runs sys.executable and imports this checkout's package."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, sys, matplotlib, nn_from_scratch\n"
        "print(sys.executable)\nprint(os.path.dirname(os.path.dirname(nn_from_scratch.__file__)))\n"
        "print(os.environ.get('NN_FROM_SCRATCH_FAST'))\nprint(os.getcwd())")]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, str(path))
    ran, _ = execute.execute(str(path), fast=True, timeout=120)
    lines = "".join(o.text for o in ran.cells[0].outputs if o.output_type == "stream").split("\n")
    assert os.path.realpath(lines[0]) == os.path.realpath(sys.executable)
    assert os.path.realpath(lines[1]) == os.path.realpath(ROOT)
    assert lines[2] == "1"
    assert os.path.realpath(lines[3]) == os.path.realpath(tmp_path)


def check_stored(nb, name):
    """The checks on a stored notebook (see the module docstring); raises AssertionError."""
    nbformat.validate(nb)
    cells = _code_cells(nb)
    for i, cell in enumerate(cells):
        magics = [ln for ln in execute.source_of(cell).splitlines() if ln.lstrip().startswith(("%", "!"))]
        assert not magics, f"{name}: code cell {i} uses IPython magics {magics}; cells must be plain Python"
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), \
        f"{name} is not stored executed top to bottom in one kernel (execution counts {counts}); " + HOW.format(name=name)
    errors = [i for i, c in enumerate(cells) if any(o.output_type == "error" for o in c.outputs)]
    assert not errors, f"{name}: code cells {errors} stored an error"
    assert not _figure_text_outputs(nb), \
        f"{name}: code cells {_figure_text_outputs(nb)} show '<Figure size ...>' text instead of a picture"
    if _plots(nb):
        assert _images(nb) > 0, f"{name} plots but stores no image/png output; " + HOW.format(name=name)
    meta = nb.metadata.get(execute.META_KEY)
    assert meta is not None, f"{name} was not stored by notebooks/execute.py (no record of what was executed); " \
        + HOW.format(name=name)
    assert meta["fast"] is False, f"{name} was stored from a fast-mode run; " + HOW.format(name=name)
    hashes = [execute.source_hash(c) for c in cells]
    assert len(meta["code_cell_sha256"]) == len(hashes), \
        f"{name}: code cells were added or removed after it was executed; " + HOW.format(name=name)
    stale = [i for i, (a, b) in enumerate(zip(hashes, meta["code_cell_sha256"])) if a != b]
    assert not stale, f"{name}: code cells {stale} were edited after it was executed; " + HOW.format(name=name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_executed(path):
    name = os.path.basename(path)
    assert os.path.getsize(path) < MAX_BYTES, f"{name} is over {MAX_BYTES:,} bytes"
    check_stored(nbformat.read(path, as_version=4), name)


def test_the_checks_fail_on_the_mistakes_they_are_for(tmp_path):
    """In a fresh kernel: the package's figures display as pictures when they are a cell's
    value (a bare ``Figure()`` does not: the issue's bug), and a stored notebook that was
    edited, run in fast mode, or not run at all is refused, each with its reason."""
    import copy

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "from matplotlib.figure import Figure\nfig = Figure()\nfig.add_subplot().plot([1, 2])\nfig",
        "from nn_from_scratch.plotting import plot_history\nplot_history({'loss': [1.0, 0.5]})",
        "x = 1 + 1\nprint(x)",
    )]
    path = str(tmp_path / "probe.ipynb")
    nbformat.write(nb, path)
    ran, _ = execute.execute(path, fast=False, timeout=120)
    bare, first, second = _code_cells(ran)
    assert _figure_text_outputs(ran) == [0]                         # a bare Figure prints as text
    assert _kinds(first) == {"execute_result:image/png"}            # ours shows, once, as a picture
    assert _kinds(second) == {"stdout"}
    ran.cells.pop(0)
    for i, cell in enumerate(ran.cells):
        cell.execution_count = i + 1
    good = execute.record(copy.deepcopy(ran), fast=False)
    check_stored(good, "probe")                                     # passes as stored
    edited = copy.deepcopy(good)
    edited.cells[1].source = "x = 2 + 2\nprint(x)"
    with pytest.raises(AssertionError, match=r"code cells \[1\] were edited after it was executed"):
        check_stored(edited, "probe")
    with pytest.raises(AssertionError, match="fast-mode run"):
        check_stored(execute.record(copy.deepcopy(ran), fast=True), "probe")
    with pytest.raises(AssertionError, match="not stored by notebooks/execute.py"):
        check_stored(ran, "probe")
    with pytest.raises(AssertionError, match=r"not stored executed top to bottom.*\[1, None\]"):
        unrun = copy.deepcopy(good)
        unrun.cells[1].execution_count = None
        check_stored(unrun, "probe")
    with pytest.raises(AssertionError, match="plots but stores no image/png"):
        blank = copy.deepcopy(good)
        blank.cells[0].outputs = []
        check_stored(blank, "probe")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes_in_a_kernel(path):
    import nbclient.exceptions

    name = os.path.basename(path)
    folder = os.path.dirname(path)
    stored = nbformat.read(path, as_version=4)
    before = set(os.listdir(folder))
    try:
        ran, seconds = execute.execute(path, fast=True, timeout=600)
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{name}: a cell failed in the kernel:\n{exc}")
    print(f"{name}: {seconds:.1f} s in fast mode, {_images(ran)} figures")
    assert set(os.listdir(folder)) == before, \
        f"{name} left files behind: {sorted(set(os.listdir(folder)) - before)}"
    assert not _figure_text_outputs(ran), \
        f"{name}: code cells {_figure_text_outputs(ran)} print '<Figure size ...>' instead of showing the figure"
    if _plots(ran):
        assert _images(ran) > 0, f"{name} plots but its execution produced no image/png output"
    skipped = {i for i, c in enumerate(_code_cells(stored)) if execute.SKIP_TAG in c.metadata.get("tags", [])}
    for i, (old, new) in enumerate(zip(_code_cells(stored), _code_cells(ran))):
        if i in skipped:
            continue
        assert _kinds(old) == _kinds(new), (
            f"{name}: code cell {i} stored outputs {sorted(_kinds(old))} but the current code produces "
            f"{sorted(_kinds(new))}: the stored outputs are stale; " + HOW.format(name=name)
            + f"\n--- cell {i} ---\n{execute.source_of(new)}")
