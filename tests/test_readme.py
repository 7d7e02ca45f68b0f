"""The README is accurate: its commands come first and every Python snippet runs.

The ```python blocks are executed in order in one namespace (they build on
each other, like a tutorial), in a temporary working directory.  A block whose
first line is ``# requires: gpu`` runs only when CuPy and a CUDA GPU are usable.
"""
import os
import re

import pytest

from nn_from_scratch import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(lang=None):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    return [b for b in found if lang is None or b[0] == lang]


def test_readme_opens_with_the_two_commands():
    first = blocks()[:2]
    assert [b[1].strip() for b in first] == ["python3 dev.py train", "python3 dev.py test"]
    with open(README, encoding="utf-8") as f:
        head = f.read().split("## ")[0]
    assert head.count("```") == 4, "nothing but the two commands before the first section"


def test_readme_tolerance_table_is_the_harness_s():
    """The published tolerances are the ones compare/compare_training use."""
    import re
    pytest.importorskip("tensorflow")
    from nn_from_scratch.checks.crosscheck import TOLERANCES
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Cross-check with Keras")[1].split("\n## ")[0]
    rows = {m.group(1).strip(): float(m.group(2)) for m in
            re.finditer(r"^\|([^|]+)\|[^|]+\|\s*`([0-9.e-]+)`\s*\|$", section, flags=re.M)}
    published = {"forward": rows["forward output of every layer, and the loss value"],
                 "gradient": rows["dL/dx, dL/dW, dL/db of every layer, dL/dlogits"],
                 "training": rows["every weight, after each of 100 training steps"]}
    assert published == TOLERANCES
    assert "benchmarks/RESULTS.md" in text


def test_readme_main_job_options_exist():
    """Every --option the README's table names is one the main job accepts."""
    from nn_from_scratch.train import _parser
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## The main job")[1].split("\n## ")[0]
    named = set(re.findall(r"`(--[a-z-]+)", section))
    accepted = {o for a in _parser()._actions for o in a.option_strings}
    assert named and named <= accepted, named - accepted


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code_blocks = blocks("python")
    assert len(code_blocks) >= 6
    have_gpu = backend.cupy_available()
    namespace = {"__name__": "__readme__"}
    before = backend.current()
    ran = 0
    for i, (_, code) in enumerate(code_blocks):
        if code.lstrip().startswith("# requires: gpu") and not have_gpu:
            continue
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message points at the block
            pytest.fail(f"README python block {i + 1} failed: {type(exc).__name__}: {exc}\n{code}")
        finally:
            backend.use(before)
        ran += 1
    assert ran >= 6
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "max relative error" in out
    assert os.path.exists(tmp_path / "lab8_cnn.npz")
