"""The package's layout keeps its design: who may import whom (docs/ARCHITECTURE.md).

Every ``.py`` file under ``nn_from_scratch/`` is parsed (never imported) and every import in it is
read: ``import a.b``, ``from a import b``, relative ``from ..x import y`` (resolved against the
file's own package), imports inside functions, methods, ``if``/``try`` blocks (lazy imports), and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.  ``from p import
name`` imports the module ``p.name`` when ``p/name.py`` (or ``p/name/``) exists, else the module
``p`` itself (so ``from nn_from_scratch import set_seed`` imports the top-level package, which
re-exports the trainer).  An old flat path of ``_legacy.OLD_PATHS`` (``nn_from_scratch.network``)
counts as the module it names now (``nn_from_scratch.training.network``).

The rules, lowest level first::

    backend.py, validation.py, atomic.py,  each other only
    by_layer.py
    data/                                  level 0, data
    layers/                                level 0, layers            (knows nothing above it)
    engine/                                level 0, layers, engine
    training/                              anything but kfac, analysis, checks, data, examples,
                                           plotting, train, __main__
    kfac/                                  anything but analysis, checks, data, examples, plotting,
                                           train, __main__
    analysis/, checks/, top-level modules  anything

Besides the directions: no import cycle anywhere in the package (lazy imports included: a cycle
that only works because one side imports late is still two modules that cannot be read apart),
and no file of the package longer than ``MAX_LINES`` (700) lines.  Today's offenders outside
the files of the restructure are named exceptions (``KNOWN_CYCLES``, ``LONG_FILES``), each to be
removed by the work on those files; an exception that no longer matches anything fails too.

A further test keeps the vocabulary of the speed machinery out of the layer files, another keeps
the top level of the package to the modules that belong there.
"""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, "nn_from_scratch")
PKG = "nn_from_scratch"

LEVEL0 = ("backend", "validation", "atomic", "by_layer")

#: (name, which files, ("only", allowed) or ("not", forbidden), why); names relative to the package
RULES = [
    ("level 0", lambda rel: rel in {f"{m}.py" for m in LEVEL0},
     ("only", LEVEL0),
     "backend.py, validation.py, atomic.py and by_layer.py import nothing from the package except each other"),
    ("data", lambda rel: rel.startswith("data/"),
     ("only", LEVEL0 + ("data",)),
     "data/ may import only level 0 (backend, validation, atomic, by_layer) and data"),
    ("layers", lambda rel: rel.startswith("layers/"),
     ("only", LEVEL0 + ("layers",)),
     "layers/ may import only nn_from_scratch.layers.* and level 0 (backend, validation, atomic, by_layer) "
     "(layers know nothing above them: not the engine, the trainer, the lab shims or the old flat paths)"),
    ("engine", lambda rel: rel.startswith("engine/"),
     ("only", LEVEL0 + ("layers", "engine")),
     "engine/ may import only layers, level 0 and engine"),
    ("training", lambda rel: rel.startswith("training/"),
     ("not", ("analysis", "checks", "data", "examples", "kfac", "plotting", "train", "__main__")),
     "training/ may not import analysis, checks, data, examples, kfac (K-FAC registers its optimizers "
     "itself), plotting, train or __main__"),
    ("kfac", lambda rel: rel.startswith("kfac/"),
     ("not", ("analysis", "checks", "data", "examples", "plotting", "train", "__main__")),
     "kfac/ may not import analysis, checks, data, examples, plotting, train or __main__"),
]


# ----------------------------------------------------------------------------- the checker
def _module_name(rel):
    """``layers/conv.py`` -> ``nn_from_scratch.layers.conv``; ``layers/__init__.py`` -> ``...layers``."""
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PKG] + parts)


def _exists(package_dir, module):
    """Is ``module`` (``nn_from_scratch.x.y``) a module or package in the tree at ``package_dir``?"""
    if module == PKG:
        return True
    if not module.startswith(PKG + "."):
        return False
    path = os.path.join(package_dir, *module[len(PKG) + 1:].split("."))
    return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def _old_paths(package_dir):
    """``_legacy.OLD_PATHS`` read from the source (no import): ``{"network": "training.network", ...}``."""
    path = os.path.join(package_dir, "_legacy.py")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OLD_PATHS" for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "OLD_PATHS":
            return ast.literal_eval(node.value)
    return {}


def _resolve_relative(module, level, this, is_package):
    """The absolute name of ``from <level dots><module> import ...`` written in module ``this``."""
    base = this.split(".") if is_package else this.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    if not base:
        return None                                 # beyond the top-level package
    return ".".join(base + ([module] if module else []))


def import_targets(path, rel, package_dir, old_paths=None):
    """``[(line, source text, imported module)]`` for every import in the file (only the package's)."""
    old_paths = _old_paths(package_dir) if old_paths is None else old_paths
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, path)
    this = _module_name(rel)
    is_package = rel.endswith("__init__.py")
    found = []

    def text(node):
        return (ast.get_source_segment(source, node) or ast.unparse(node)).replace("\n", " ")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, text(node), alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(node.module, node.level, this, is_package) if node.level
                    else node.module)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = _exists(package_dir, sub) or (base == PKG and alias.name in old_paths)
                target = sub if alias.name != "*" and is_module else base
                found.append((node.lineno, text(node), target))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
                found.append((node.lineno, text(node), node.args[0].value))
    unique = dict.fromkeys((line, src, target) for line, src, target in found     # one per line and module
                           if target == PKG or target.startswith(PKG + "."))
    return list(unique)


def _canonical(target, old_paths):
    """``(name relative to the package, note)``: an old path (``network``, ``layers.rectifiers``)
    becomes its new home (the longest old path that is a prefix of the name)."""
    rel = target[len(PKG) + 1:] if target != PKG else ""
    parts = rel.split(".") if rel else []
    for n in range(len(parts), 0, -1):
        old = ".".join(parts[:n])
        if old in old_paths:
            new = ".".join([old_paths[old]] + parts[n:])
            return new, f" (the old path of {PKG}.{new})"
    return rel, ""


def _covered(rel_name, prefixes):
    return any(rel_name == p or rel_name.startswith(p + ".") for p in prefixes)


def _python_files(package_dir):
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                yield path, os.path.relpath(path, package_dir).replace(os.sep, "/")


def violations(package_dir=PACKAGE_DIR, rules=RULES):
    """Every import that breaks a rule, as a message naming file, line, the import and the rule."""
    old_paths = _old_paths(package_dir)
    out = []
    for path, rel in _python_files(package_dir):
        applicable = [r for r in rules if r[1](rel)]
        if not applicable:
            continue
        for line, src, target in import_targets(path, rel, package_dir, old_paths):
            name, note = _canonical(target, old_paths)
            for rule_name, _, (kind, prefixes), why in applicable:
                if name == "":                      # the top-level package: it re-exports training/
                    bad, why_here = kind == "only", " (the top-level package, which re-exports training/)"
                elif kind == "only":                # an old flat path is not an allowed name either
                    bad, why_here = bool(note) or not _covered(name, prefixes), note
                else:
                    bad, why_here = _covered(name, prefixes), note
                if bad:
                    out.append(f"nn_from_scratch/{rel}:{line}: `{src}` imports {target}{why_here}; "
                               f"rule [{rule_name}]: {why}")
    return out


# ----------------------------------------------------------------------------- the tests
def test_imports_go_in_the_allowed_directions():
    bad = violations()
    assert not bad, (f"{len(bad)} import(s) against the layering of docs/ARCHITECTURE.md:\n  "
                     + "\n  ".join(bad))


def _write(root, rel, text):
    path = os.path.join(root, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def test_the_checker_flags_a_bad_import(tmp_path):
    """The checker itself: a synthetic package with one import of each kind, good and bad."""
    root = str(tmp_path / PKG)
    for rel in ("__init__.py", "backend.py", "validation.py", "_legacy.py", "layers/__init__.py",
                "engine/__init__.py", "engine/conv.py", "training/__init__.py", "data/__init__.py",
                "analysis/__init__.py"):
        _write(root, rel, "OLD_PATHS = {'network': 'training.network'}\n" if rel == "_legacy.py" else "")
    _write(root, "layers/good.py", "from .. import backend\nfrom ..validation import count\nfrom . import base\n"
                                   "import nn_from_scratch.layers.other\n")
    _write(root, "layers/bad.py", "import numpy\n\n\ndef f():\n    from ..engine import conv  # lazy\n"
                                  "    return conv\n")
    _write(root, "layers/bad2.py", "from nn_from_scratch import network\n")       # an old flat path
    _write(root, "layers/bad3.py", "from .. import set_seed\n")                   # the top-level package
    _write(root, "layers/sub/__init__.py", "")
    _write(root, "layers/sub/bad4.py", "import importlib\nm = importlib.import_module('nn_from_scratch.training')\n")
    _write(root, "engine/fine.py", "from ..layers.conv import Convolution\nfrom . import conv\n")
    _write(root, "training/bad5.py", "x = 1\nif x:\n    from ..analysis import curvature\n")
    _write(root, "training/fine.py", "from ..engine import conv\nfrom .. import backend\n")
    _write(root, "data/bad6.py", "from ..layers import base\n")
    _write(root, "backend.py", "from . import validation\n")
    _write(root, "validation.py", "from .engine import conv\n")
    found = violations(root)
    by_file = {}
    for msg in found:
        by_file.setdefault(msg.split(":")[0], []).append(msg)
    assert sorted(by_file) == sorted(f"nn_from_scratch/{f}" for f in (
        "layers/bad.py", "layers/bad2.py", "layers/bad3.py", "layers/sub/bad4.py", "training/bad5.py",
        "data/bad6.py", "validation.py")), found
    (msg,) = by_file["nn_from_scratch/layers/bad.py"]
    assert msg.startswith("nn_from_scratch/layers/bad.py:5: `from ..engine import conv` imports "
                          "nn_from_scratch.engine.conv; rule [layers]:"), msg
    assert "old path of nn_from_scratch.training.network" in by_file["nn_from_scratch/layers/bad2.py"][0]
    assert ":3: `from ..analysis import curvature`" in by_file["nn_from_scratch/training/bad5.py"][0]


def test_relative_imports_resolve_to_absolute_names(tmp_path):
    root = str(tmp_path / PKG)
    _write(root, "__init__.py", "")
    _write(root, "backend.py", "")
    _write(root, "checks/__init__.py", "from . import gradcheck\n")
    _write(root, "checks/gradcheck.py", "")
    _write(root, "checks/crosscheck/__init__.py", "from .tolerances import TOLERANCES\n")
    _write(root, "checks/crosscheck/tolerances.py", "")
    _write(root, "checks/crosscheck/cli.py",
           "from ..grade import x\nfrom ... import backend\nfrom ...backend import y\nfrom . import tolerances\n")

    def targets(rel):
        return [t for _, _, t in import_targets(os.path.join(root, *rel.split("/")), rel, root)]

    assert targets("checks/__init__.py") == ["nn_from_scratch.checks.gradcheck"]
    assert targets("checks/crosscheck/__init__.py") == ["nn_from_scratch.checks.crosscheck.tolerances"]
    assert targets("checks/crosscheck/cli.py") == [
        "nn_from_scratch.checks.grade", "nn_from_scratch.backend", "nn_from_scratch.backend",
        "nn_from_scratch.checks.crosscheck.tolerances"]


#: the vocabulary of the speed machinery, which no layer file uses (layers are textbook pages)
ENGINE_WORDS = ("engine", "chunk", "phase", "fusion", "fused", "worker", "shard")
_WORD = re.compile(r"(?<![A-Za-z])(?:" + "|".join(ENGINE_WORDS) + ")", re.I)          # engine, phase_chunk, Workers
_CAMEL = re.compile(r"(?<=[a-z])(?:" + "|".join(w.capitalize() for w in ENGINE_WORDS) + ")")   # adoptPhase


def engine_words(path):
    """``[(line, word, text)]``: the engine words on each line of the file (code, docstrings, comments).

    A word counts at the start of a word or identifier part (``phase_chunk_bytes``, ``workers``,
    ``PhasePool``, ``stand_aside_for_fusion``), not inside another word (``emphases``, ``confused``).
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            words = {m.group(0).lower(): m.group(0) for m in list(_WORD.finditer(line)) + list(_CAMEL.finditer(line))}
            out += [(i, w, line.strip()) for w in words.values()]
    return out


def test_engine_words_are_recognised(tmp_path):
    p = tmp_path / "x.py"
    p.write_text('"""Runs fused with the Engine."""\nphase_chunk_bytes = 1\nworkers = PhasePool\n'
                 'adoptPhase = 2\n# emphases, confused, defused: not engine words\n', encoding="utf-8")
    words = [(line, w.lower()) for line, w, _ in engine_words(str(p))]
    assert sorted(words) == sorted([(1, "fused"), (1, "engine"), (2, "phase"), (2, "chunk"), (3, "worker"),
                                    (3, "phase"), (4, "phase"), (5, "engine")]), words


def test_layer_files_do_not_mention_the_engine():
    offenders = []
    for path, rel in _python_files(os.path.join(PACKAGE_DIR, "layers")):
        offenders += [f"nn_from_scratch/layers/{rel}:{line}: {word!r} in: {text}"
                      for line, word, text in engine_words(path)]
    assert not offenders, (f"{len(offenders)} mention(s) of {', '.join(ENGINE_WORDS)} under layers/ "
                           "(a layer file is a textbook page; the engine is described in docs/ARCHITECTURE.md):\n  "
                           + "\n  ".join(offenders))


#: what may stay at the top level of nn_from_scratch/ (everything else lives in a sub-package)
TOP_LEVEL = {"__init__.py", "__main__.py", "_legacy.py", "backend.py", "validation.py", "atomic.py", "by_layer.py",
             "plotting.py", "train.py", "interfaces.py", "nodes.py", "neurons.py", "optimizers.py", "cli_errors.py"}


def test_every_package_directory_has_an_init():
    missing = []
    for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if "__init__.py" not in filenames:
            missing.append(os.path.relpath(dirpath, ROOT))
    assert not missing, f"directories under nn_from_scratch/ without an __init__.py: {missing}"


def test_only_the_allowed_modules_stay_at_the_top_level():
    files = {e.name for e in os.scandir(PACKAGE_DIR) if e.is_file() and not e.name.endswith((".pyc", ".pyo"))}
    extra = sorted(files - TOP_LEVEL)
    assert not extra, (f"files at the top level of nn_from_scratch/ that belong in a sub-package "
                       f"(layers/, engine/, training/, data/, checks/, analysis/, examples/): {extra}; "
                       f"allowed there: {sorted(TOP_LEVEL)}")



# ----------------------------------------------------------------------------- import cycles
#: today's cycles outside the restructured files: (what, a test for a cycle's modules, who removes it).
#: A cycle is excused when ``test`` holds for the set of its modules (names relative to the package).
KNOWN_CYCLES = [
]


def import_graph(package_dir=PACKAGE_DIR):
    """``{module: {module: (file, line, import text)}}`` over the package, names relative to it (the
    top-level package is ``""``); every explicit import (lazy ones too), old paths at their new homes.
    A package's ``__init__`` importing its parents (which Python does first) is not an edge: only
    what the file itself names."""
    old_paths = _old_paths(package_dir)
    graph = {}
    for path, rel in _python_files(package_dir):
        this = _module_name(rel)
        name = this[len(PKG) + 1:] if this != PKG else ""
        edges = graph.setdefault(name, {})
        for line, src, target in import_targets(path, rel, package_dir, old_paths):
            other, _ = _canonical(target, old_paths)
            if other != name:
                edges.setdefault(other, (f"nn_from_scratch/{rel}", line, src))
    return graph


def import_cycles(package_dir=PACKAGE_DIR):
    """Every import cycle: ``[(modules of a strongly connected component, one cycle through it as
    [(file, line, import text)])]`` (Tarjan's algorithm, iterative)."""
    graph = import_graph(package_dir)
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        components.append(sorted(comp))
    out = []
    for comp in components:
        members, start = set(comp), comp[0]
        # a shortest path back to the start inside the component (breadth first)
        prev, frontier = {start: None}, [start]
        while frontier and start not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        path = [graph[last][start]]
        while prev[last] is not None:
            path.append(graph[prev[last]][last])
            last = prev[last]
        out.append((comp, path[::-1]))
    return out


def _excuse(modules):
    return next((what for what, test, _ in KNOWN_CYCLES if test(set(modules))), None)


def test_no_import_cycles():
    bad = [(mods, path) for mods, path in import_cycles() if _excuse(mods) is None]
    assert not bad, ("import cycles in the package (lazy imports count; break each by moving what both "
                     "sides need into a module of its own):\n  " + "\n  ".join(
                         f"{' <-> '.join(mods)}: " + " -> ".join(f"{f}:{line} `{src}`" for f, line, src in path)
                         for mods, path in bad))


def test_every_known_cycle_still_exists():
    """A named exception that no longer matches a cycle is removed from ``KNOWN_CYCLES``."""
    found = [mods for mods, _ in import_cycles()]
    stale = [what for what, test, _ in KNOWN_CYCLES if not any(test(set(mods)) for mods in found)]
    assert not stale, f"KNOWN_CYCLES names cycles that are gone (remove them): {stale}"


def test_the_cycle_checker_finds_lazy_and_indirect_cycles(tmp_path):
    root = str(tmp_path / PKG)
    for rel in ("__init__.py", "backend.py", "training/__init__.py", "layers/__init__.py", "analysis/__init__.py"):
        _write(root, rel, "")
    _write(root, "training/a.py", "from . import b\n")
    _write(root, "training/b.py", "def f():\n    from .c import g  # lazy\n    return g\n")
    _write(root, "training/c.py", "import nn_from_scratch.training.a\n")
    _write(root, "layers/x.py", "from . import y\n")             # x -> y only: no cycle
    _write(root, "layers/y.py", "from .. import backend\n")
    _write(root, "analysis/p.py", "from .q import z\n")
    _write(root, "analysis/q.py", "import importlib\nm = importlib.import_module('nn_from_scratch.analysis.p')\n")
    cycles = import_cycles(root)
    assert sorted(mods for mods, _ in cycles) == [["analysis.p", "analysis.q"],
                                                  ["training.a", "training.b", "training.c"]], cycles
    path = dict((tuple(m), p) for m, p in cycles)[("training.a", "training.b", "training.c")]
    assert [(f, line) for f, line, _ in path] == [("nn_from_scratch/training/a.py", 1),
                                                  ("nn_from_scratch/training/b.py", 2),
                                                  ("nn_from_scratch/training/c.py", 1)], path


# ----------------------------------------------------------------------------- file length
MAX_LINES = 700
#: today's longer files outside the restructured ones, each to be split by the work on it
LONG_FILES = {
}


def _line_counts(package_dir=PACKAGE_DIR):
    out = {}
    for path, rel in _python_files(package_dir):
        with open(path, encoding="utf-8") as f:
            out[rel] = sum(1 for _ in f)
    return out


def test_no_package_file_is_longer_than_700_lines():
    long = {rel: n for rel, n in _line_counts().items() if n > MAX_LINES and rel not in LONG_FILES}
    assert not long, (f"files over {MAX_LINES} lines (one concept per small file; split them): "
                      + ", ".join(f"nn_from_scratch/{rel} ({n})" for rel, n in sorted(long.items())))


def test_every_long_file_exception_is_still_long():
    counts = _line_counts()
    stale = [rel for rel in LONG_FILES if counts.get(rel, 0) <= MAX_LINES]
    assert not stale, f"LONG_FILES names files that are no longer over {MAX_LINES} lines (remove them): {stale}"
