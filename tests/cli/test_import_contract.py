"""The import contract, read from the source (every import, including those inside functions; `if TYPE_CHECKING:`
blocks excluded): no module imports one above it, and no imports go round in a cycle.

Layers, bottom to top (a module may import its own layer and those below):

    0  maths, kernels, io helpers, the registry    functional, atomic, kernels.*, registry, peft_types
    1  adapter weights, targeting, files            adapters, blocks, checkpoint
    2  the tuner layer, loading, configs            layers, loading, config
    3  mixed batches, the injector                  mixed, tuner
    4  PEFT registration                            peft_bridge, registration
    5  the methods                                  methods.*
    6  what uses adapters                           export, descriptors, population
    7  the application                              collection, demo, training.*, diffusion.*, generation.*, studies.*
    8  the command line                             cli (the `peft-inits` entry point)

The application layer still holds one cycle (issue 20): the Block-wise ablation trains through the SD command line
(`runner.train(runner.parse_args(argv))`) while the runner's `ablation` command calls the ablation. It is listed here
and may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ALLOWED_ARGPARSE: list[str] = []
PACKAGE = Path(__file__).resolve().parents[2] / "peft_inits"
LAYERS = [
    ["functional", "atomic", "kernels", "registry", "peft_types"],
    ["adapters", "blocks", "checkpoint"],
    ["layers", "loading", "config"],
    ["mixed", "tuner"],
    ["peft_bridge", "registration"],
    ["methods"],
    ["export", "descriptors", "population"],
    ["collection", "demo", "training", "diffusion"],
    ["glyph"],
    ["generation"],
    ["studies"],
    ["cli"],
]


def _modules() -> dict[str, Path]:
    """Module names relative to the package ("" is peft_inits/__init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (relative names)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".") if package else []
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(["peft_inits", *anchor, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                # `from X import m` imports module X.m when there is one, else a name of X
                found = [f"{base}.{a.name}" if _relative(f"{base}.{a.name}") in modules else base for a in node.names]
            else:
                continue
            for target in found:
                relative = _relative(target)
                if relative is not None and relative in modules and relative != name:
                    targets.add(relative)
        graph[name] = targets
    return graph


def _relative(target: str) -> str | None:
    if target == "peft_inits" or target.startswith("peft_inits."):
        return target.removeprefix("peft_inits").lstrip(".")
    return None


def layer_of(module: str) -> int:
    """The module's layer; the package's own `__init__` ("") re-exports the public API and sits on top."""
    if not module:
        return len(LAYERS)
    return next(i for i, layer in enumerate(LAYERS) if module.split(".")[0] in layer)


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if m and not any(m.split(".")[0] in layer for layer in LAYERS)]
    assert not unplaced, f"place these modules in a layer of the contract: {unplaced}"


def test_no_module_imports_one_above_it():
    graph = import_graph()
    upward = sorted(
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph.items()
        if module
        for target in targets
        if layer_of(target) > layer_of(module)
    )
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles: {found}"


def test_the_contract_sees_imports_inside_functions():
    """The ablation imports the SD training engine only inside a function: a reader that missed such imports would
    pass the layer rule vacuously."""
    assert "diffusion.train" in import_graph()["studies.ablation"]
    assert "registry" not in import_graph()["registry"]


def test_only_the_command_line_parses_arguments():
    """Library functions take settings dataclasses; argparse lives in `cli`, the application on top."""
    importers = sorted(
        name for name, path in _modules().items()
        if name.split(".")[0] != "cli" and _imports_argparse(ast.parse(path.read_text()))
    )  # fmt: skip
    assert importers == ALLOWED_ARGPARSE, f"argparse outside cli/: {importers}"


def _imports_argparse(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False
