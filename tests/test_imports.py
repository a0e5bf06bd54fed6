"""Imports go one way: text → tokenizer → features → model (+ head) → loss or predictions → metrics.

Every `.py` file under src/bertkit is parsed (not imported) and each import of a bertkit module is
an arrow: module-level, inside a function (a lazy import is still a dependency) or under
TYPE_CHECKING. `from bertkit.x import name` points at `bertkit.x.name` when that is a module of
its own, else at `bertkit.x`. The graph must have no cycle, no arrow from a layer to a higher one,
and none of the arrows that RULES forbids outright.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bertkit"

# Lowest first. A module may import modules of its own layer and of the layers below it, never of
# a layer above. `x.*` stands for every module inside package x. Names not (yet) in the package
# are allowed here, so a module can be declared before it lands; a module with no layer fails.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("fileio",),
    # labels: IGNORE and other label constants shared by data, tasks and heads; padding: ragged token
    # lists -> padded batches, for data, tasks, embedding and export; packing: padded batches -> packed rows
    ("config", "labels", "padding", "packing"),
    ("options", "settings", "distributed", "devices"),  # settings: the torch-free argument dataclasses of the
    # CLI; devices: --device -> torch.device, batches moved there, inference autocast
    ("tokenizer", "models", "data.corpus"),  # models: model names -> checkpoint folders
    ("checkpoint", "dropout"),  # checkpoint: the file format and key map: it takes any module with a config, never
    # model.py's classes; dropout: nn.Dropout's meaning with a cheaper CPU mask, for the model and the heads
    ("vocab", "data", "data.*"),  # features for pretraining
    ("model",),
    ("heads", "objective", "sentence", "contrastive", "compiled", "quantize"),  # objective: StepSums and the
    # losses a task returns; sentence: ST layout; contrastive: the embedding losses (in-batch negatives,
    # gradient cache); compiled: torch.compile of the encoder for inference, bucketed lengths; quantize:
    # int8 linear layers for inference
    ("tasks", "tasks.*"),  # readers, featurizers, a task's loss and metrics
    ("predict", "embedding", "fill_mask", "export", "inside"),  # prediction sits below training: it cannot import it
    ("pipeline", "vector_index"),  # vector_index: `bertkit index` and `bertkit search` over embeddings
    ("",),  # bertkit/__init__.py, the public API: what is above it may import it (for __version__, say)
    ("serve", "serve.*"),  # a thin shell over prediction
    ("runs", "metrics_log", "best", "optim", "train"),
    ("pretrain", "finetune"),
    ("demo",),
    ("cli",),
    ("__main__",),
]

TRAINING = ("train", "optim", "runs", "metrics_log", "best", "pretrain", "finetune")
# (importers, forbidden targets): explicit whatever the layers say, so reordering LAYERS cannot
# quietly allow them.
RULES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("data", "data.*", "tasks", "tasks.*", "model"), ("heads", *TRAINING, "cli", "predict"),
     "data, tasks and the model never import heads, training, prediction or the CLI"),
    (("predict", "pipeline", "embedding", "fill_mask", "export", "vector_index", "serve", "serve.*"), TRAINING,
     "prediction and serving never import training"),
    (("tokenizer",), ("model", "heads"), "the tokenizer never imports the model"),
]
ONLY_IMPORTED_BY = {"cli": ("__main__",)}


# ---- reading the package --------------------------------------------------------------------------


def module_files(package: Path = PACKAGE, name: str = "bertkit") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (packages by __init__.py)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join([name, *parts])] = path
    return modules


def import_arrows(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the bertkit modules it imports (what the tests below check).

    A bertkit name that is no module of the package stays an arrow of its own (to a module still
    to be written, say), which then fails for want of a layer rather than passing unseen."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _arrow_targets(node, module, modules, is_package=path.name == "__init__.py"):
                if target.split(".")[0] == "bertkit" and target != module:
                    graph[module].add(target)
    return graph


def _arrow_targets(node: ast.AST, module: str, modules: dict[str, Path], *, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):  # `import bertkit.a.b` runs bertkit.a.b
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module if is_package else module.rpartition(".")[0]
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    # `from bertkit import fileio` points at bertkit.fileio; `from bertkit import __version__` at bertkit
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


# ---- the three checks, as functions of a graph ----------------------------------------------------


def _matches(module: str, pattern: str) -> bool:
    full = "bertkit" + ("." + pattern if pattern else "")
    if full.endswith(".*"):
        return module.startswith(full[:-1])
    return module == full


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(_matches(module, pattern) for pattern in layer):
            return i
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Loops of imports, as 'a -> b -> a': the shortest loop through each module that is on one
    (Tarjan's strongly connected components, then a breadth-first walk inside each)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion no deeper than the number of modules
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = set()
    for component in components:
        if len(component) == 1 and not any(v in graph.get(v, ()) for v in component):
            continue
        for start in component:  # a shortest loop through every member, so each pair is named
            loop = _shortest_loop(graph, start, component)[:-1]
            first = loop.index(min(loop))
            loop = loop[first:] + loop[:first]  # the same loop found from another member is one loop
            cycles.add(" -> ".join([*loop, loop[0]]))
    return sorted(cycles)


def _shortest_loop(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    return paths[v] + [start]
                if w in within and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no loop")  # unreachable for a component from find_cycles


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):  # type: ignore[operator]
                out.append(f"{module} -> {target} (layer {layer_of(module)} imports layer {layer_of(target)})")
    return out


def forbidden_arrows(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            for importers, forbidden, why in RULES:
                if any(_matches(module, p) for p in importers) and any(_matches(target, p) for p in forbidden):
                    out.append(f"{module} -> {target}: {why}")
            for only, allowed in ONLY_IMPORTED_BY.items():
                if _matches(target, only) and not any(_matches(module, p) for p in allowed):
                    out.append(f"{module} -> {target}: only {', '.join(allowed)} may import {only}")
    return out


# ---- the package --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_arrows(module_files())


def test_the_walk_finds_the_package(graph):
    assert {"bertkit", "bertkit.model", "bertkit.cli", "bertkit.tasks.base", "bertkit.data.shards"} <= set(graph)
    assert "bertkit.errors" in graph["bertkit.config"]


def test_every_module_has_a_layer(graph):
    named = graph.keys() | set().union(*graph.values())  # importers, and modules imported (written or not)
    missing = sorted(m for m in named if layer_of(m) is None)
    assert not missing, "give these modules a layer in tests/test_imports.py LAYERS: " + ", ".join(missing)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_no_upward_imports(graph):
    if any(layer_of(m) is None for m in graph.keys() | set().union(*graph.values())):
        pytest.skip("a module has no layer (test_every_module_has_a_layer)")
    upward = upward_arrows(graph)
    assert not upward, "imports from a higher layer (see LAYERS):\n  " + "\n  ".join(upward)


def test_no_forbidden_imports(graph):
    forbidden = forbidden_arrows(graph)
    assert not forbidden, "forbidden imports:\n  " + "\n  ".join(forbidden)


# ---- the checks can fail --------------------------------------------------------------------------


def test_a_cycle_is_named():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert find_cycles(graph) == ["a -> b -> c -> a", "e -> e"]
    # two loops sharing a module: both are named, each once
    assert find_cycles({"m": {"c", "k"}, "c": {"m"}, "k": {"m"}}) == ["c -> m -> c", "k -> m -> k"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_every_kind_of_import_is_an_arrow(tmp_path):
    package = tmp_path / "bertkit"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from bertkit.sub.leaf import X\n")
    (package / "sub" / "leaf.py").write_text("X = 1\n")
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "if TYPE_CHECKING:\n"
        "    from bertkit.typed import T\n"
        "def f():\n"
        "    from bertkit import lazy\n"
        "    import bertkit.sub.leaf\n"
        "    from .sub import X\n"
        "    from bertkit.unwritten import Y\n"
    )
    for name in ("typed", "lazy"):
        (package / f"{name}.py").write_text("")
    (package / "sub" / "rel.py").write_text("from . import leaf\nfrom .. import low\n")
    arrows = import_arrows(module_files(package))
    assert arrows["bertkit.low"] == {"bertkit.typed", "bertkit.lazy", "bertkit.sub.leaf", "bertkit.sub",
                                     "bertkit.unwritten"}
    assert arrows["bertkit.sub.rel"] == {"bertkit.sub.leaf", "bertkit.low"}
    assert arrows["bertkit.sub"] == {"bertkit.sub.leaf"}


def test_an_upward_or_forbidden_arrow_is_reported():
    graph = {"bertkit.model": {"bertkit.config", "bertkit.train"}, "bertkit.config": set(), "bertkit.train": set(),
             "bertkit.demo": {"bertkit.cli"}, "bertkit.cli": set()}
    assert upward_arrows(graph) == [
        f"bertkit.demo -> bertkit.cli (layer {layer_of('bertkit.demo')} imports layer {layer_of('bertkit.cli')})",
        f"bertkit.model -> bertkit.train (layer {layer_of('bertkit.model')} imports layer {layer_of('bertkit.train')})",
    ]
    assert forbidden_arrows(graph) == [
        "bertkit.demo -> bertkit.cli: only __main__ may import cli",
        "bertkit.model -> bertkit.train: data, tasks and the model never import heads, training, prediction or the CLI",
    ]
    assert layer_of("bertkit.tasks.qa") == layer_of("bertkit.tasks") and layer_of("bertkit.nope") is None
