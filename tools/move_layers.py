"""Move the flat forwarder/ into packages per layer (core/, io/, service/), deterministically, on whatever
forwarder/ is checked out: `git mv` each module to its package, move the named top-level definitions of the
modules that are split to their new modules, and rewrite every `forwarder.X` import in forwarder/, netlab/,
tests/, conftest.py and setup.py (and the console script in pyproject.toml) to the new places.

A module of forwarder/ this script does not know, or an import it cannot map, stops it before anything is
changed, naming them: where a new module belongs is decided by a person, not guessed.

    python3 tools/move_layers.py            # in a clean checkout; then review `git status` and commit
"""

import argparse
import ast
import builtins
import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "forwarder"

# Where each module of forwarder/ goes (None: it stays where it is).
MODULES: dict[str, str | None] = {
    "__init__": None,
    "__main__": None,
    "errors": None,
    "core": "core.addresses",
    "endpoint": "core.addresses",  # merged: every definition moves, the file goes
    "machine": "core.machine",
    "icmp": "core.icmp",
    "proxy_protocol": "core.proxy_protocol",
    "destination": "core.destination",
    "batch": "io.batch",
    "gso": "io.gso",
    "receive": "io.receive",
    "sockets": "io.sockets",
    "sender": "io.flow_sockets",
    "engine": "io.engine",
    "rawsend": "io.rawsend",
    "capabilities": "io.capabilities",
    "cli": "service.cli",
    "activation": "service.activation",
    "notify": "service.notify",
    "logs": "service.logs",
    "metrics": "service.metrics",
    "mapping": "service.mapping",
    "routecheck": "service.routecheck",
}
MERGED = {"endpoint"}

# Top-level definitions that leave their module for another one: (module, name) -> new module.
SYMBOLS: dict[str, dict[str, str]] = {
    "core": {
        **dict.fromkeys(["DropReason", "drop_key", "_reasons", "Totals", "Counters"], "core.counters"),
        **dict.fromkeys(["K", "V", "Entry", "E", "FlowTable", "bounded_put"], "core.flows"),
        "presentable_source": "core.policy",
        "decimal": "core.destination",
        "duplicates": "service.mapping",
    },
    "endpoint": {"endpoint_text": "core.addresses"},
    "machine": {
        **dict.fromkeys(
            ["FlowKey", "_AF_INET6", "_AF_INET", "_V4_MAPPED", "Path", "Flow", "canonical_sockaddr"],
            "core.flows",
        ),
        **dict.fromkeys(
            [
                "OpenFlow",
                "SendOnce",
                "Drop",
                "CloseFlows",
                "ReadHeader",
                "READ_HEADER",
                "Action",
                "ProxiedAction",
            ],
            "core.actions",
        ),
        "errno_name": "core.counters",
        "_family_of": "core.addresses",
        **dict.fromkeys(["_NAMEABLE", "_proxy_header", "LocalProbe", "_NothingLocal"], "core.policy"),
    },
    "cli": dict.fromkeys(
        [
            "PROG",
            "MIN_INTERVAL",
            "MAX_BUFFER",
            "FAMILIES",
            "_Parser",
            "_number",
            "_positive",
            "_seconds",
            "_buffer_size",
            "_metrics_path",
            "_file_kind",
            "_network",
            "build_parser",
        ],
        "service.options",
    ),
    "destination": dict.fromkeys(["_shorthand_ipv4", "lookup", "pick", "resolve"], "service.resolution"),
    "batch": dict.fromkeys(["IOVec", "MsgHdr", "MMsgHdr"], "io.linux"),
    "activation": dict.fromkeys(["address_text", "ListeningSocket"], "io.listeners"),
    "engine": {"Route": "io.listeners"},
    "logs": {"RepeatSummary": "io.repeats"},
}

# The opening of each module that did not exist before.
DOCSTRINGS = {
    "core": "The forwarder's decisions, with no I/O: datagram metadata in, actions out (in the manner of\n"
    "aioquic's connection). Nothing here opens a socket, reads a clock or the environment, or logs;\n"
    "tests/test_forwarder_layers.py keeps it so.",
    "io": "The forwarder's Linux I/O around the core: the ABI through ctypes, receiving and sending\n"
    "strategies, listening and flow sockets, and the loop that executes the core's actions.",
    "service": "The daemon around the I/O: the command line, socket activation, sd_notify, logs, metrics,\n"
    "destination resolution and the start-up checks.",
    "core.counters": "What the forwarder counts: drop reasons, this interval's counts and the totals since\n"
    "start (the one home of the numbers STATUS= and the metrics file show).",
    "core.flows": "Flows and the table that keeps them: a client's flow to one destination, keyed by the\n"
    "4-tuple, in a bounded table with second-chance eviction and an idle timeout.",
    "core.actions": "The actions the machine hands out for a datagram (the open Flow itself is one) and\n"
    "the events' answers: open a flow, send once from a local source, drop, close flows.",
    "core.policy": "Which source a client is presented with, or why it cannot be; what the PROXY header of\n"
    "a flow says; the probes the machine asks about this host's addresses.",
    "io.linux": "The Linux ABI the standard library does not wrap, through ctypes: struct iovec, msghdr\n"
    "and mmsghdr.",
    "io.listeners": "The listening sockets and the routes from each of them to its destination.",
    "io.repeats": "Rate-limited logging of repeating events (drops, ICMP errors): one line at once, then\n"
    "one summary per interval.",
    "service.options": "The command line's options: the parser, and the types that check each value as it\n"
    "is read (a bad one is a usage error naming it).",
    "service.resolution": "Resolving a destination's host name once, at start-up, to one address per family.",
}

TEST_FILE = ROOT / "tools" / "test_forwarder_layers.py"


class Stop(Exception):
    """Something this script does not know: a person decides."""


def ruff() -> str:
    """The ruff of this checkout's tox lint environment, else the one on PATH."""
    for candidate in (ROOT / ".tox" / "lint" / "bin" / "ruff", ROOT / ".venv" / "bin" / "ruff"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("ruff")
    if found is None:
        raise Stop("no ruff: run `./dev test -e lint` once")
    return found


def run(*command: str) -> str:
    return subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout


@dataclass
class Origin:
    """An old module of forwarder/: its statements, what each defines, what it imports."""

    name: str
    source: str
    tree: ast.Module
    defined: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [
            inner.id
            for target in node.targets
            for inner in ast.walk(target)
            if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store)
        ]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def is_import_block(node: ast.stmt) -> bool:
    """An import, or `if TYPE_CHECKING:` around imports."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return True
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        and all(isinstance(inner, ast.Import | ast.ImportFrom) for inner in node.body)
    )


def load_origins() -> dict[str, Origin]:
    origins = {}
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        origin = Origin(path.stem, source, ast.parse(source, str(path)))
        for statement in origin.tree.body:
            for name in defined_names(statement):
                origin.defined[name] = statement
        for node in ast.walk(origin.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("forwarder"):
                for alias in node.names:
                    origin.imports[alias.asname or alias.name] = (node.module, alias.name)
        origins[path.stem] = origin
    return origins


def check(origins: dict[str, Origin]) -> None:
    """Stop on anything not decided: an unknown module, a package already there, a definition named in
    SYMBOLS that no longer exists."""
    if any(path.is_dir() and path.name != "__pycache__" for path in PACKAGE.iterdir()):
        raise Stop("forwarder/ has subpackages already: moved before?")
    unknown = sorted(set(origins) - set(MODULES))
    if unknown:
        raise Stop(
            "modules this script does not know: "
            + ", ".join(f"forwarder/{name}.py" for name in unknown)
            + " (add each to MODULES, with the layer it belongs to)"
        )
    missing = [
        f"{module}.{name}"
        for module, names in SYMBOLS.items()
        if module in origins
        for name in names
        if name not in origins[module].defined
    ]
    if missing:
        raise Stop("definitions SYMBOLS moves that are gone: " + ", ".join(missing))
    if not TEST_FILE.exists():
        raise Stop(f"{TEST_FILE.relative_to(ROOT)} is missing")


def new_module(
    old: str, name: str, origins: dict[str, Origin], seen: frozenset[tuple[str, str]] = frozenset()
) -> str:
    """The module of forwarder (dotted, without 'forwarder.') where `name` of old module `old` lives after
    the move: its own definition's new place, or, for a name the module imports, the place of that."""
    origin = origins[old]
    if name in origin.defined:
        target = SYMBOLS.get(old, {}).get(name) or MODULES[old]
        return target if target is not None else old
    if name in origin.imports and (old, name) not in seen:
        module, original = origin.imports[name]
        parts = module.split(".")
        if len(parts) == 2 and parts[1] in origins:
            return new_module(parts[1], original, origins, seen | {(old, name)})
    raise Stop(f"cannot tell where {name!r} of forwarder/{old}.py goes")


def statement_lines(source_lines: list[str], node: ast.stmt) -> tuple[int, int]:
    """The 0-based line range [start, end) of a top-level statement, with its decorators and the comment
    lines right above it."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while start > 0 and source_lines[start - 1].startswith("#"):
        start -= 1
    return start, node.end_lineno or node.lineno


def used_names(tree: ast.AST) -> set[str]:
    """Every name a module reads, string annotations included."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
            try:
                expression = ast.parse(node.value, mode="eval")
            except SyntaxError:
                continue
            names.update(inner.id for inner in ast.walk(expression) if isinstance(inner, ast.Name))
    return names


def split(origins: dict[str, Origin]) -> dict[str, str]:
    """The text of every module after the move, by new dotted name (without 'forwarder.'); imports still
    in the old names (rewritten afterwards), plus imports of names that now live in a sibling."""
    pieces: dict[str, list[tuple[str, str]]] = defaultdict(list)  # new module -> [(old module, text)]
    heads: dict[str, list[str]] = defaultdict(list)  # new module -> import blocks (text)
    primary: dict[str, str] = {}  # new module -> old module that is git mv'ed to it
    for old, origin in origins.items():
        target = MODULES[old] or old
        lines = origin.source.splitlines(keepends=True)
        moving = SYMBOLS.get(old, {})
        taken: set[int] = set()
        for node in origin.tree.body:
            names = defined_names(node)
            goes = {moving[name] for name in names if name in moving}
            if len(goes) > 1:
                raise Stop(f"one statement of forwarder/{old}.py defines names for two modules: {names}")
            if not goes:
                continue
            start, end = statement_lines(lines, node)
            pieces[goes.pop()].append((old, "".join(lines[start:end]).rstrip() + "\n"))
            taken.update(range(start, end))
        import_text = "".join(
            "".join(lines[slice(*statement_lines(lines, node))])
            for node in origin.tree.body
            if is_import_block(node)
        )
        for module in set(moving.values()):
            heads[module].append(import_text)
        if old not in MERGED:
            primary[target] = old
            kept = "".join(line for index, line in enumerate(lines) if index not in taken)
            pieces[target].insert(0, (old, re.sub(r"\n{3,}", "\n\n\n", kept).rstrip() + "\n"))
    where: dict[tuple[str, str], str] = {}  # (old module, name) -> new module, for the splits' definitions
    for old in SYMBOLS:
        if old in origins:
            for name in origins[old].defined:
                where[(old, name)] = new_module(old, name, origins)
    texts = {}
    for module, parts in pieces.items():
        if module in primary:
            text = "\n\n".join(text for _, text in parts)
            if heads[module]:
                text = insert_after_imports(text, "".join(heads[module]))
        else:
            body = "\n\n".join(text for _, text in parts)
            text = f'"""{DOCSTRINGS[module]}\n"""\n\n' + "".join(heads[module]) + "\n\n" + body
        olds = {old for old, _ in parts}
        tree = ast.parse(text)
        defined = {name for node in tree.body for name in defined_names(node)}
        imported = {
            alias.asname or alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        wanted = used_names(tree) - defined - imported - set(dir(builtins))
        extra: dict[str, list[str]] = defaultdict(list)
        for name in sorted(wanted):
            homes = {where[(old, name)] for old in olds if (old, name) in where}
            homes.discard(module)
            if len(homes) == 1:
                extra[homes.pop()].append(name)
        if extra:
            imports = "".join(
                f"from forwarder.{home} import {', '.join(names)}\n" for home, names in extra.items()
            )
            text = insert_after_imports(text, imports)
        texts[module] = text
    return texts


def insert_after_imports(text: str, lines: str) -> str:
    tree = ast.parse(text)
    last = 0
    for node in tree.body:
        if is_import_block(node):
            last = node.end_lineno or node.lineno
        elif last:
            break
    if not last:  # after the docstring
        last = tree.body[0].end_lineno or 1 if tree.body else 0
    source = text.splitlines(keepends=True)
    return "".join(source[:last]) + lines + "".join(source[last:])


def rewrite_imports(text: str, here: str | None, origins: dict[str, Origin]) -> str:
    """`text` with every import of an old forwarder module pointing at the new places; `here` is the new
    dotted name of the module itself (its own names are not imported)."""
    tree = ast.parse(text)
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "forwarder" and len(parts) > 1 and parts[1] in origins:
                    raise Stop(f"`import {alias.name}` (line {node.lineno}): rewrite it by hand")
            continue
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "forwarder":
            continue
        groups: dict[str, list[str]] = {}
        if node.module == "forwarder":
            for alias in node.names:
                if alias.name in origins and MODULES[alias.name]:
                    package, _, leaf = f"forwarder.{MODULES[alias.name]}".rpartition(".")
                    spelled = (
                        leaf
                        if alias.asname is None and leaf == alias.name
                        else f"{leaf} as {alias.asname or alias.name}"
                    )
                    groups.setdefault(package, []).append(spelled)
                else:
                    groups.setdefault("forwarder", []).append(_spelled(alias))
        elif len(parts) == 2 and parts[1] in origins:
            for alias in node.names:
                home = new_module(parts[1], alias.name, origins)
                if home == here:
                    continue
                groups.setdefault(f"forwarder.{home}", []).append(_spelled(alias))
        else:
            continue
        indent = " " * node.col_offset
        tail = lines[(node.end_lineno or node.lineno) - 1][node.end_col_offset or 0 :].rstrip("\n")
        comment = tail if tail.strip().startswith("#") else ""  # a noqa comment stays with the import
        new = "".join(
            f"{indent}from {module} import {', '.join(names)}{comment}\n" for module, names in groups.items()
        )
        parent = parents.get(id(node))
        body = getattr(parent, "body", [])
        if not new and len(body) == 1:
            new = f"{indent}pass\n"
        edits.append((node.lineno - 1, node.end_lineno or node.lineno, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = [new]
    return "".join(lines)


EMBEDDED = re.compile(r"from forwarder\.(\w+) import ((?:\w+(?: as \w+)?)(?:, \w+(?: as \w+)?)*)")
DOTTED = re.compile(r"(?<![\w.])forwarder\.(\w+)(?:\.(\w+))?")
SLASHED = re.compile(r"(?<![\w.])forwarder/(\w+)\.py\b")


def new_modules() -> set[str]:
    return {target for target in MODULES.values() if target} | {
        target for moves in SYMBOLS.values() for target in moves.values()
    }


def rewrite_references(text: str, origins: dict[str, Origin]) -> str:
    """In prose and in code held as text (a child Python's program, a console script's entry point):
    `from forwarder.X import a, b` (several modules joined by '; ', which keeps one line), `forwarder.X`,
    `forwarder.X.name` and `forwarder/X.py` pointed at the new places. A name the old module does not have
    (`forwarder.notify.values()` of a lab's forwarder handle) and the new packages are left alone."""
    modules = new_modules()

    def embedded(match: re.Match[str]) -> str:
        old = match.group(1)
        names = [spelled.split(" as ")[0] for spelled in match.group(2).split(", ")]
        if old not in origins or any(f"{old}.{name}" in modules for name in names):
            return match.group(0)
        groups: dict[str, list[str]] = {}
        for spelled, name in zip(match.group(2).split(", "), names, strict=True):
            groups.setdefault(f"forwarder.{new_module(old, name, origins)}", []).append(spelled)
        return "; ".join(f"from {module} import {', '.join(names)}" for module, names in groups.items())

    def dotted(match: re.Match[str]) -> str:
        old, name = match.group(1), match.group(2)
        if old not in origins or MODULES.get(old) is None:
            return match.group(0)
        if name is None or name.startswith("__"):
            if old in {module.split(".")[0] for module in modules}:
                return match.group(0)  # forwarder.core: the new package is meant now
            rest = match.group(0)[len(f"forwarder.{old}") :]
            return f"forwarder.{MODULES[old]}{rest}"
        if f"{old}.{name}" in modules or (
            name not in origins[old].defined and name not in origins[old].imports
        ):
            return match.group(0)
        return f"forwarder.{new_module(old, name, origins)}.{name}"

    def slashed(match: re.Match[str]) -> str:
        target = MODULES.get(match.group(1)) if match.group(1) in origins else None
        return match.group(0) if target is None else f"forwarder/{target.replace('.', '/')}.py"

    return SLASHED.sub(slashed, DOTTED.sub(dotted, EMBEDDED.sub(embedded, text)))


def rewrite_python_text(text: str, origins: dict[str, Origin]) -> str:
    """rewrite_references on the strings and comments of a Python module (its code is the AST's job)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    edits = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT):
            new = rewrite_references(token.string, origins)
            if new != token.string:
                begin = starts[token.start[0] - 1] + token.start[1]
                end = starts[token.end[0] - 1] + token.end[1]
                edits.append((begin, end, new))
    for begin, end, new in reversed(edits):
        text = text[:begin] + new + text[end:]
    return text


def _spelled(alias: ast.alias) -> str:
    return alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"


ENGINE_PROTOCOLS = '''

class Manager(Protocol):
    """Where READY=, STATUS=, WATCHDOG= and STOPPING= go: the service manager (forwarder.service.notify)."""

    @property
    def enabled(self) -> bool: ...

    def notify(self, **fields: str) -> bool: ...


class Metrics(Protocol):
    """Where the counters are written at every report (forwarder.service.metrics)."""

    path: pathlib.Path

    def write(self, counters: Counters, flows: int) -> bool: ...
'''


def engine_without_service(text: str) -> str:
    """The engine (io) without its two imports of the service layer: what it needs of the notifier and the
    metrics file is said by two protocols of its own."""
    for line in (
        "from forwarder.service.metrics import MetricsFile\n",
        "from forwarder.service.notify import Notifier\n",
    ):
        if line not in text:
            raise Stop(f"io/engine.py has no {line.strip()!r}: decouple it from the service by hand")
        text = text.replace(line, "")
    text = text.replace("notifier: Notifier,", "notifier: Manager,").replace(
        "MetricsFile | None", "Metrics | None"
    )
    text = insert_after_imports(text, "import pathlib\nfrom typing import Protocol\n")
    anchor = "\n\nlog = logging.getLogger"
    if anchor not in text:
        raise Stop("io/engine.py has no module logger to put the protocols before")
    return text.replace(anchor, ENGINE_PROTOCOLS + anchor, 1)


def python_files() -> list[Path]:
    """The tracked Python files outside forwarder/ and tools/ (tests, netlab, man/, conftest.py, ...)."""
    names = run("git", "ls-files", "*.py").split()
    return [ROOT / name for name in names if not name.startswith(("forwarder/", "tools/"))]


def text_files() -> list[Path]:
    """The tracked files other than Python, outside forwarder/ and tools/, that mention forwarder/ or
    forwarder.X (pyproject files, README, units, ...)."""
    found = subprocess.run(
        ["git", "grep", "-l", "-E", r"forwarder[./]|packages = \[\"forwarder\"\]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return [
        ROOT / name
        for name in found
        if not name.endswith(".py") and not name.startswith(("forwarder/", "tools/"))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-dirty", action="store_true", help="do not insist on a clean checkout")
    args = parser.parse_args()
    if not args.allow_dirty and run("git", "status", "--porcelain", "--untracked-files=no").strip():
        raise Stop("the checkout has uncommitted changes: commit or stash them first")
    origins = load_origins()
    check(origins)
    texts = split(origins)
    # The rest of the tree, rewritten in memory first: a Stop leaves nothing half done.
    others = {}
    for path in python_files():
        if path.parent != PACKAGE:
            others[path] = rewrite_python_text(rewrite_imports(path.read_text(), None, origins), origins)
    stays = {old: origins[old] for old, target in MODULES.items() if target is None and old in origins}
    texts.update({old: origin.source for old, origin in stays.items()})
    final = {
        module: rewrite_python_text(rewrite_imports(text, module, origins), origins)
        for module, text in texts.items()
    }
    final["io.engine"] = engine_without_service(final["io.engine"])

    # Now the files: git mv each module (a temporary name first: core.py gives way to core/).
    for old in origins:
        target = MODULES[old]
        if target is not None and old not in MERGED:
            run("git", "mv", f"forwarder/{old}.py", f"forwarder/_moving_{old}.py")
    for layer in ("core", "io", "service"):
        (PACKAGE / layer).mkdir()
        (PACKAGE / layer / "__init__.py").write_text(f'"""{DOCSTRINGS[layer]}\n"""\n')
    for old in origins:
        target = MODULES[old]
        if target is not None and old not in MERGED:
            run("git", "mv", f"forwarder/_moving_{old}.py", f"forwarder/{target.replace('.', '/')}.py")
        elif old in MERGED:
            run("git", "rm", "-q", f"forwarder/{old}.py")
    written = []
    for module, text in final.items():
        path = PACKAGE / (module.replace(".", "/") + ".py")
        path.write_text(text)
        written.append(path)
    for path, text in others.items():
        if text != path.read_text():
            path.write_text(text)
            written.append(path)
    run("git", "mv", str(TEST_FILE.relative_to(ROOT)), "tests/test_forwarder_layers.py")
    texts_changed = rewrite_text_files(text_files(), origins)
    files = [str(path.relative_to(ROOT)) for path in written]
    subprocess.run([ruff(), "check", "--fix", "--select", "F401,I001", "-q", *files], cwd=ROOT, check=False)
    for path in written:  # an import block left empty by the cleanup
        path.write_text(re.sub(r"\nif TYPE_CHECKING:\n    pass\n", "\n", path.read_text()))
    subprocess.run([ruff(), "check", "--fix", "--select", "F401,I001", "-q", *files], cwd=ROOT, check=False)
    subprocess.run([ruff(), "format", "-q", *files], cwd=ROOT, check=True)
    run("git", "add", "-A", "forwarder", *(str(path.relative_to(ROOT)) for path in written + texts_changed))
    run("git", "add", "tests/test_forwarder_layers.py")
    for old, names in SYMBOLS.items():
        if old in origins:
            print(f"forwarder/{old}.py -> {MODULES[old]}: moved {', '.join(sorted(names))}")
    return 0


def rewrite_text_files(paths: list[Path], origins: dict[str, Origin]) -> list[Path]:
    """The packages lists of the pyproject files, and every reference to an old module in the other
    text files, pointed at the new places."""
    layers = ["forwarder.core", "forwarder.io", "forwarder.service"]
    changed = []
    for path in paths:
        text = original = path.read_text()
        text = text.replace('packages = ["forwarder"]', f"packages = {json.dumps(['forwarder', *layers])}")
        text = text.replace(
            '    "forwarder",\n', '    "forwarder",\n' + "".join(f'    "{name}",\n' for name in layers)
        )
        text = rewrite_references(text, origins)
        if text != original:
            path.write_text(text)
            changed.append(path)
    return changed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Stop as stop:
        print(f"move_layers: {stop}", file=sys.stderr)
        sys.exit(1)
