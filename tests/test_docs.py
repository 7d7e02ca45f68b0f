"""The documentation site builds without a warning, and every example on it runs.

* ``mkdocs build --strict`` of ``mkdocs.yml`` passes (a broken link, a missing page
  or an API reference to a name that does not exist fails it), into a temporary
  folder.  Skipped, saying so, only when MkDocs and its plugins are not installed
  (``pip install -e ".[docs]"``; ``python3 dev.py test`` installs them).
* Every ```python block of ``docs/**/*.md`` is executed, page by page: the blocks of
  a page in order, in one namespace (they build on each other, like a tutorial), in
  a temporary working directory, as ``tests/test_readme.py`` does for the README.
  A block whose first line is ``# requires: gpu`` runs only when CuPy and a CUDA GPU
  are usable; ``# requires: tensorflow`` only when TensorFlow imports (the Keras
  cross-check); any other ``# requires:`` is an error.
"""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from nn_from_scratch import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
REQUIRES = re.compile(r"\A\s*#\s*requires:\s*(\w+)")

def _mkdocs_missing():
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return None


def pages():
    return sorted(os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


def python_blocks(page):
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        text = f.read()
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "python"]


def _have_tensorflow():
    return importlib.util.find_spec("tensorflow") is not None


def _build(config, site_dir):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config,
                           "--site-dir", str(site_dir)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)


def _skip_outside_ci(reason):
    """Skip where MkDocs was not installed by hand; in CI (dev.py installs it) its absence is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " - in CI the dev environment must have it")
    pytest.skip(reason)


def test_mkdocs_build_strict(tmp_path):
    missing = _mkdocs_missing()
    if missing:
        _skip_outside_ci(f"MkDocs is not installed ({missing} missing): pip install -e \".[docs]\"")
    proc = _build(os.path.join(ROOT, "mkdocs.yml"), tmp_path / "site")
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    # the API reference was generated from the docstrings, not left empty
    with open(tmp_path / "site" / "api" / "layers" / "index.html", encoding="utf-8") as f:
        html = f.read()
    assert "Linear" in html and "Convolution" in html and "backward" in html


def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    """The configuration's strictness is real: the same settings refuse a dead link."""
    missing = _mkdocs_missing()
    if missing:
        _skip_outside_ci(f"MkDocs is not installed ({missing} missing): pip install -e \".[docs]\"")
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        config = f.read()
    assert re.search(r"^strict: true$", config, re.M), "mkdocs.yml must set strict: true"
    validation = config[config.index("\nvalidation:"):].split("\nnav:")[0]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# t\n\nSee [nowhere](no-such-page.md).\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nstrict: true\ndocs_dir: docs\n{validation}\n"
                                         "nav:\n  - index.md\n", encoding="utf-8")
    proc = _build(str(tmp_path / "mkdocs.yml"), tmp_path / "site")
    assert proc.returncode != 0 and "no-such-page.md" in proc.stdout + proc.stderr


def _page_params():
    for page in pages():
        if not python_blocks(page):
            continue
        yield pytest.param(page, id=page)


def test_the_docs_have_examples():
    counted = {p: len(python_blocks(p)) for p in pages()}
    for page in ("index.md", "layers.md", "custom-layers.md", "training.md", "checking.md", "analysis/index.md"):
        assert counted.get(page, 0) >= 1, f"docs/{page} has no ```python example"


@pytest.mark.parametrize("page", list(_page_params()))
def test_doc_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    have = {"gpu": backend.cupy_available(), "tensorflow": _have_tensorflow()}
    namespace = {"__name__": "__docs__"}
    before = backend.current()
    ran, skipped = 0, []
    for i, code in enumerate(python_blocks(page), start=1):
        need = REQUIRES.match(code)
        if need:
            assert need.group(1) in have, (f"docs/{page} python block {i}: unknown '# requires: {need.group(1)}' "
                                           f"(known: {sorted(have)})")
            if not have[need.group(1)]:
                skipped.append(f"block {i} needs {need.group(1)}")
                continue
        try:
            exec(compile(code, f"docs/{page} python block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message points at the block
            pytest.fail(f"docs/{page} python block {i} failed: {type(exc).__name__}: {exc}\n{code}")
        finally:
            backend.use(before)
        ran += 1
    if not ran:
        pytest.skip(f"docs/{page}: every block needs what is missing here ({'; '.join(skipped)})")


def _page_text(page):
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        return f.read()


def test_published_tolerance_table_is_the_harness_s():
    """The tolerances docs/checking.md publishes are the ones compare/compare_training use."""
    pytest.importorskip("tensorflow")
    from nn_from_scratch.checks.crosscheck import TOLERANCES
    text = _page_text("checking.md")
    section = text.split("## Cross-check with Keras")[1].split("\n## ")[0]
    rows = {m.group(1).strip(): float(m.group(2)) for m in
            re.finditer(r"^\|([^|]+)\|[^|]+\|\s*`([0-9.e-]+)`\s*\|$", section, flags=re.M)}
    published = {"forward": rows["forward output of every layer, and the loss value"],
                 "gradient": rows["dL/dx, dL/dW, dL/db of every layer, dL/dlogits"],
                 "training": rows["every weight, after each of 100 training steps"]}
    assert published == TOLERANCES
    assert "CROSSCHECK.md" in section


def test_main_job_options_exist():
    """Every --option that docs/training.md's table of the main job names is one the job accepts."""
    from nn_from_scratch.train import _parser
    section = _page_text("training.md").split("## The main job")[1].split("\n## ")[0]
    named = set(re.findall(r"`(--[a-z-]+)", section))
    accepted = {o for a in _parser()._actions for o in a.option_strings}
    assert len(named) >= 9 and named <= accepted, named - accepted
