"""The forwarder's layers, kept by reading the source (nothing here imports the modules it checks):
`forwarder/core/` decides without I/O, `forwarder/io/` does the Linux I/O, `forwarder/service/` is the
daemon around them; a layer imports only the layers below it, and no module of forwarder/ or netlab/
imports itself back through any chain of imports (function-local and type-only imports included)."""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("forwarder", "netlab")
# Each layer of the forwarder and the layers it may import; modules at the package's top (errors,
# __init__) are the base everyone may import, and __main__ is the entry point, above every layer.
LAYERS: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "core": frozenset({"base", "core"}),
    "io": frozenset({"base", "core", "io"}),
    "service": frozenset({"base", "core", "io", "service"}),
    "entry": frozenset({"base", "core", "io", "service"}),
}
ENTRY_POINTS = frozenset({"forwarder.__main__"})
# What the core may not import: each of these does I/O, waits or reads a clock or the environment.
IO_MODULES = frozenset(
    {
        "asyncio",
        "ctypes",
        "fcntl",
        "io",
        "logging",
        "mmap",
        "os",
        "pathlib",
        "resource",
        "select",
        "selectors",
        "shutil",
        "signal",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "time",
    }
)
# Functions of the socket module that compute without a socket or the network.
PURE_SOCKET_FUNCTIONS = frozenset(
    {"inet_pton", "inet_ntop", "inet_aton", "inet_ntoa", "CMSG_LEN", "CMSG_SPACE"}
)
MAX_LINES = 400
IO_BUILTINS = frozenset({"open", "print", "input", "breakpoint", "exec", "eval", "__import__"})


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def modules(package: str) -> dict[str, Module]:
    """Every module of `package` in the checkout, by dotted name, parsed."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


ALL = {name: module for package in PACKAGES for name, module in modules(package).items()}
FORWARDER = {name: module for name, module in ALL.items() if name.split(".")[0] == "forwarder"}


def imported(module: Module, known: dict[str, Module]) -> Iterator[tuple[str, int]]:
    """The modules of `known` that `module` imports anywhere in its body, with the line: `from a import b`
    imports a.b when that is a module, else a."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    yield target, node.lineno
                elif base in known:
                    yield base, node.lineno


def layer_of(name: str) -> str:
    """The layer of a forwarder module: its subpackage, or base / entry for the modules at the top."""
    if name in ENTRY_POINTS:
        return "entry"
    parts = name.split(".")
    if len(parts) > 2 or (len(parts) == 2 and FORWARDER[name].is_package):
        return parts[1]
    return "base"


def test_the_forwarder_is_in_one_package_per_layer_and_nothing_else() -> None:
    packages = sorted(
        path.name for path in (ROOT / "forwarder").iterdir() if path.is_dir() and path.name != "__pycache__"
    )
    assert packages == sorted(set(LAYERS) - {"base", "entry"})
    for name in FORWARDER:
        assert layer_of(name) in LAYERS, f"{name} is in no layer: expected one of {sorted(LAYERS)}"


@pytest.mark.parametrize("name", sorted(FORWARDER))
def test_a_layer_imports_only_the_layers_below_it(name: str) -> None:
    layer = layer_of(name)
    wrong = [
        f"{FORWARDER[name].path.relative_to(ROOT)}:{line} imports {target} ({layer_of(target)})"
        for target, line in imported(FORWARDER[name], FORWARDER)
        if layer_of(target) not in LAYERS[layer]
    ]
    assert not wrong, f"{name} ({layer}) may import only {sorted(LAYERS[layer])}: " + "; ".join(wrong)


def io_in(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Where a module imports an I/O module, calls a function of the socket module that is not pure
    arithmetic on addresses, names socket.socket outside a type annotation, or calls open() and friends."""
    annotations = {
        id(inner)
        for node in ast.walk(tree)
        for annotation in _annotations(node)
        for inner in ast.walk(annotation)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in IO_MODULES:
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and not node.level:
            root = (node.module or "").split(".")[0]
            if root in IO_MODULES:
                yield node.lineno, f"from {node.module} import ..."
            if root == "socket":
                for alias in node.names:
                    if alias.name not in PURE_SOCKET_FUNCTIONS and alias.name[:1].islower():
                        yield node.lineno, f"from socket import {alias.name}"
        elif (
            isinstance(node, ast.Attribute)
            and id(node) not in annotations
            and isinstance(node.value, ast.Name)
            and node.value.id == "socket"
            and (
                node.attr == "socket" or (node.attr[:1].islower() and node.attr not in PURE_SOCKET_FUNCTIONS)
            )
        ):
            yield node.lineno, f"socket.{node.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_BUILTINS:
            yield node.lineno, f"{node.func.id}()"


def _annotations(node: ast.AST) -> Iterator[ast.expr]:
    if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
        yield node.annotation
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        yield node.returns


CORE = sorted(name for name in FORWARDER if layer_of(name) == "core")


@pytest.mark.parametrize("name", CORE)
def test_the_core_does_no_io(name: str) -> None:
    module = FORWARDER[name]
    found = [f"{module.path.relative_to(ROOT)}:{line}: {what}" for line, what in io_in(module.tree)]
    assert not found, f"{name} is in the sans-I/O core but does I/O: " + "; ".join(found)


def test_the_io_check_sees_each_kind_of_io() -> None:
    source = """
import selectors
from os import fstat
import socket
def f(sock: socket.socket) -> socket.socket:
    socket.getaddrinfo("example.org", 53)
    open("/etc/hosts")
    return socket.socket()
"""
    found = [what for _, what in sorted(io_in(ast.parse(source)))]
    assert found == [
        "import selectors",
        "from os import ...",
        "socket.getaddrinfo",
        "open()",
        "socket.socket",
    ]
    assert not list(io_in(ast.parse("import socket\nx = socket.inet_pton(socket.AF_INET, '192.0.2.1')\n")))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (or a module importing
    itself), as the list of modules around it, the first repeated at the end (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(component)) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path from the component's first module back to itself, staying inside the component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no cycle in {sorted(component)}")


def test_no_module_imports_itself_back() -> None:
    graph = {name: {target for target, _ in imported(module, ALL)} for name, module in ALL.items()}
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_the_cycle_check_prints_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["d", "d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(FORWARDER))
def test_no_module_is_longer_than_400_lines(name: str) -> None:
    lines = len(FORWARDER[name].path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: expected at most {MAX_LINES} (split it by job)"
