"""What the repository shows is in the repository, and holds nothing of the machine that made it.

* Every image that the README, a documentation page (``docs/**/*.md``) or
  ``benchmarks/RESULTS.md`` links exists, inside the checkout, and is not kept out
  by ``.gitignore`` (so a clone shows it).
* No committed notebook's stored outputs hold an absolute path of the machine that
  executed it (``/work/...``, ``/home/...``, ``C:\\...``): notebooks print paths
  relative to their folder (``find_test_set(relative_to=".")``).
"""
import glob
import json
import os
import re
import shutil
import subprocess

import pytest

from nn_from_scratch.train import display_path, find_test_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Markdown images ``![alt](path "title")`` and HTML ``<img src="path">``.
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.I)
#: The beginnings of absolute paths of a machine (POSIX system folders, a Windows drive).
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~-])/(?:work|home|root|tmp|Users|mnt|opt|var|srv|scratch)/"
    r"|(?<![\w])[A-Za-z]:\\\\?[A-Za-z_]")

def _documents():
    pages = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    return [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "benchmarks", "RESULTS.md")] + pages


def _strip_code(text):
    """The Markdown without fenced and inline code (an image there is an example, not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def linked_images(path):
    with open(path, encoding="utf-8") as f:
        text = _strip_code(f.read())
    return [m.group(1) for rx in (MD_IMAGE, HTML_IMAGE) for m in rx.finditer(text)]


def _in_git():
    return shutil.which("git") is not None and os.path.exists(os.path.join(ROOT, ".git"))


def _not_in_git(paths):
    """``(untracked, ignored)``: the paths git does not hold (neither committed nor staged), and of
    those the ones .gitignore keeps out.  Both empty outside a git checkout (an unpacked sdist)."""
    if not paths or not _in_git():
        return set(), set()
    rel = [os.path.relpath(p, ROOT) for p in paths]
    tracked = subprocess.run(["git", "ls-files", "--"] + rel, cwd=ROOT, capture_output=True, text=True).stdout
    untracked = set(rel) - set(tracked.splitlines())
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, capture_output=True,
                          text=True, input="\n".join(sorted(untracked)))
    return untracked, set(proc.stdout.splitlines())


def test_the_scan_finds_images_and_skips_code():
    """The link pattern is not vacuous: it sees both forms and ignores code examples."""
    sample = ('![a](figures/a.png) <img src="b.svg" width=3> ![c](../c.png "t")\n'
              "```\n![no](x.png)\n```\n`![no](y.png)`\n")
    tmp = os.path.join(ROOT, "tests", "__images_sample.md")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(sample)
        assert sorted(linked_images(tmp)) == ["../c.png", "b.svg", "figures/a.png"]
    finally:
        os.unlink(tmp)


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_linked_image_is_committed(doc):
    missing, outside, local = [], [], []
    for link in linked_images(doc):
        if re.match(r"[a-z]+://", link) or link.startswith("data:"):
            continue                         # a remote image is not ours to commit
        target = os.path.normpath(os.path.join(os.path.dirname(doc), link.split("#")[0]))
        if not (target + os.sep).startswith(ROOT + os.sep):
            outside.append(link)
        elif not os.path.isfile(target):
            missing.append(link)
        else:
            local.append(target)
    untracked, ignored = _not_in_git(local)
    name = os.path.relpath(doc, ROOT)
    assert not outside, f"{name} links images outside the repository: {outside}"
    assert not missing, (f"{name} links images that do not exist: {missing} (commit them under "
                         "docs/figures/ or benchmarks/results/, or give the command that makes them instead)")
    assert not ignored, f"{name} links images that .gitignore keeps out of the repository: {sorted(ignored)}"
    assert not untracked, f"{name} links images that are not committed (git add them): {sorted(untracked)}"


def _notebook_outputs(path):
    """``[(cell number, text)]`` of every stored output of the notebook (texts, errors, data)."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    found = []
    for i, cell in enumerate(nb.get("cells", []), start=1):
        for out in cell.get("outputs", []):
            parts = []
            if "text" in out:
                parts.append(out["text"])
            parts += out.get("traceback", [])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    parts.append(value if isinstance(value, (str, list)) else json.dumps(value))
            for part in parts:
                found.append((i, "".join(part) if isinstance(part, list) else str(part)))
    return found


def absolute_paths(text):
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in ABSOLUTE_PATH.finditer(text)]


def test_the_absolute_path_pattern_can_fail():
    for bad in ("from /work/shared/data/mnist", "'/home/ann/x.npz'", "at /root/.keras", "C:\\Users\\ann",
                "/tmp/pytest-1/x", "in /Users/bob/nn"):
        assert absolute_paths(bad), bad
    for fine in ("from ../../shared/data/mnist", "~/.keras/datasets/mnist.npz", "10/work/3", "a/home/b",
                 "ratio 1/tmp", "http://x.org/home/"):
        assert not absolute_paths(fine), fine


def _notebook_params():
    for path in sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))):
        yield pytest.param(path, id=os.path.basename(path))


@pytest.mark.parametrize("notebook", list(_notebook_params()))
def test_notebook_outputs_hold_no_absolute_path(notebook):
    hits = [(cell, snippet) for cell, text in _notebook_outputs(notebook) for snippet in absolute_paths(text)]
    assert not hits, (f"{os.path.basename(notebook)} stores absolute paths of the machine that ran it "
                      f"(print paths relative to the notebook's folder, e.g. find_test_set(relative_to=\".\"), "
                      f"then re-execute it): " + "; ".join(f"cell {c}: ...{s}..." for c, s in hits[:5]))


def test_display_path_is_never_absolute(tmp_path):
    home = tmp_path / "home" / "ann"
    nb = tmp_path / "srv" / "proj" / "notebooks"
    for d in (home / ".keras" / "datasets", nb, tmp_path / "srv" / "shared" / "data" / "mnist"):
        d.mkdir(parents=True)
    assert display_path(tmp_path / "srv" / "shared" / "data" / "mnist", nb, home=home) == \
        os.path.join("..", "..", "shared", "data", "mnist")
    assert display_path(home / ".keras" / "datasets" / "mnist.npz", nb, home=home) == \
        os.path.join("~", ".keras", "datasets", "mnist.npz")
    far = tmp_path / "elsewhere" / "x"
    shown = display_path(far, nb, home=home)
    assert not os.path.isabs(shown) and shown.startswith(os.pardir)


def test_find_test_set_relative_to_names_no_absolute_path(tmp_path):
    """The notebooks' call: the description and the places looked are relative."""
    import numpy as np
    root, home, nb = tmp_path / "p" / "proj", tmp_path / "home", tmp_path / "p" / "proj" / "notebooks"
    nb.mkdir(parents=True)
    X, y, looked = find_test_set(environ={}, root=str(root), home=str(home), relative_to=str(nb))
    assert X is None and looked == [os.path.join("..", "..", "shared", "data", "mnist"),
                                    os.path.join("~", ".keras", "datasets", "mnist.npz")]
    data = tmp_path / "p" / "shared" / "data" / "mnist"
    data.mkdir(parents=True)
    np.savez(data / "mnist.npz", x_train=np.zeros((1, 28, 28), np.uint8), y_train=np.zeros(1, np.uint8),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.array([3, 4], np.uint8))
    X, y, where = find_test_set(environ={}, root=str(root), home=str(home), relative_to=str(nb))
    assert list(y) == [3, 4] and where.endswith("from " + os.path.join("..", "..", "shared", "data", "mnist"))
    assert not absolute_paths(where) and str(tmp_path) not in where
    _, _, where_abs = find_test_set(environ={}, root=str(root), home=str(home))
    assert str(data) in where_abs                      # without relative_to: as before
