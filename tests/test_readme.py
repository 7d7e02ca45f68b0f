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


def test_readme_is_a_front_page():
    """At most ~250 lines, and every relative link in it leads to a file of the checkout."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert text.count("\n") <= 250, f"README.md has {text.count(chr(10))} lines; move detail into docs/"
    prose = FENCE.sub("", text)
    links = [m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", prose)]
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link) and not link.startswith("#")]
    assert len(local) >= 10, local                  # the docs pages are linked
    missing = [link for link in local if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, f"README.md links files that do not exist: {missing}"
    for page in ("docs/index.md", "docs/layers.md", "docs/custom-layers.md", "docs/training.md",
                 "docs/checking.md", "docs/analysis/index.md", "docs/benchmarks.md"):
        assert page in local, f"README.md does not link {page}"
    assert "python3 dev.py lock" in text and "python3 dev.py docs" in text


def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code_blocks = blocks("python")
    assert len(code_blocks) >= 3
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
    assert ran >= 3
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "max relative error" in out
    assert os.path.exists(tmp_path / "lab8_cnn.npz")
