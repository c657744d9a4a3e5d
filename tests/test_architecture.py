"""The package's shape, checked from its source: no import cycles (imports inside functions
count), no registry name compared with a string outside its table entry, no upward imports
between the layers, and a config that loads without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ft_dist"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body, except under
    ``if TYPE_CHECKING:`` and except a package's imports of its own children."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in filter(None, map(known, found)):
                own_child = is_package and target.startswith(name + ".")
                if target != name and not own_child:
                    targets.add(target)
        graph[name] = targets
    return graph


def _runtime_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
            continue
        yield node
        yield from _runtime_nodes(node)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it (depth-first search)."""
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


DOC = PACKAGE.parent / "docs" / "architecture.md"


def documented_layers() -> list[list[str]]:
    """The path tokens of each line of the layer diagram in docs/architecture.md, top first."""
    text = DOC.read_text().split("## Layers", 1)[1]
    block = text.split("```", 2)[1]
    return [line.split("|", 1)[0].split() for line in block.strip().splitlines()]


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The line whose path matches ``module`` longest (``dir/`` a package and everything
    under it, ``file.py`` one module, ``pkg/__init__.py`` the package module only)."""
    path = module.removeprefix("ft_dist").lstrip(".").replace(".", "/")
    best, found = -1, None
    for index, tokens in enumerate(layers):
        for token in tokens:
            if token.endswith("/"):
                hit = (path + "/").startswith(token)
            elif token.endswith("__init__.py"):
                hit = path == token.removesuffix("/__init__.py").removesuffix("__init__.py")
            else:
                hit = path == token.removesuffix(".py")
            if hit and len(token) > best:
                best, found = len(token), index
    return found


def test_the_diagram_places_every_module() -> None:
    layers = documented_layers()
    assert [m for m in import_graph() if layer_of(m, layers) is None] == []


def test_imports_follow_the_documented_layers() -> None:
    layers = documented_layers()
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer_of(target, layers) < layer_of(source, layers)
    ]
    assert upward == []


def test_the_layer_check_sees_an_upward_import() -> None:
    layers = [["cli/"], ["train/strategies/__init__.py", "train/config.py"], ["train/"]]
    assert layer_of("ft_dist.train.strategies.ddp", layers) == 2
    assert layer_of("ft_dist.train.strategies", layers) == 1
    assert layer_of("ft_dist.train.config", layers) == 1
    assert layer_of("ft_dist.cli.train", layers) == 0


NAMES = r"(edst|pdst|dst_ensemble|single|ddp|deepspeed|fsdp2?|gradient|momentum|random|magnitude|sgd|adamw?)"
NAME_BRANCH = re.compile(
    r"""(method|strategy|growth|drop|optimizer|\.name)\w*\s*(==|!=|\bin\b)\s*[(\[{]?\s*["']"""
    + NAMES
    + "[\"']"
)


def test_no_registry_name_compared_with_a_string() -> None:
    branches = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if NAME_BRANCH.search(line)
    ]
    assert branches == []


def test_config_loads_without_torch() -> None:
    code = (
        "import sys, ft_dist.config, ft_dist.train.strategies, ft_dist.train.methods, "
        "ft_dist.train.optimizers; print(sorted(m for m in sys.modules if m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
