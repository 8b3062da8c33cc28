"""netlab keeps one home per helper: relay routing in netlab.service.relay, IP_TRANSPARENT through the
forwarder's set_transparent, and a node that does not import the lab that imports it."""

import ast
from pathlib import Path

import netlab

NETLAB = Path(netlab.__file__).parent
# Programs run inside nodes as scripts of their own (the per-datagram contender mimics the C original).
LIBRARY = [path for path in NETLAB.rglob("*.py") if "programs" not in path.relative_to(NETLAB).parts]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any level (TYPE_CHECKING blocks and functions included)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def names_used(path: Path) -> set[str]:
    """Every identifier and attribute name `path` mentions."""
    tree = ast.parse(path.read_text())
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }


def test_a_node_does_not_import_the_lab_that_imports_it() -> None:
    assert "netlab.lab.node" in imported_modules(NETLAB / "lab" / "lab.py")
    assert "netlab.lab.lab" not in imported_modules(NETLAB / "lab" / "node.py")


def test_netlab_sets_ip_transparent_only_through_the_forwarders_helper() -> None:
    by_hand = [
        str(path.relative_to(NETLAB))
        for path in LIBRARY
        if {"IP_TRANSPARENT", "IPV6_TRANSPARENT"} & names_used(path)
    ]
    assert by_hand == []
    users = sorted(str(path.relative_to(NETLAB)) for path in LIBRARY if "set_transparent" in names_used(path))
    assert users == ["lab/node.py", "lab/tproxy.py", "service/relay.py"]


def test_relay_routing_has_one_module() -> None:
    defining = sorted(
        str(path.relative_to(NETLAB))
        for path in LIBRARY
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id in {"RELAY_TABLE", "RELAY_PRIORITY"}
    )
    assert defining == ["service/relay.py", "service/relay.py"]
    assert not (NETLAB / "service" / "relayroute.py").exists()
    bench = (NETLAB / "bench" / "lab.py").read_text()
    assert "ipr.rule(" not in bench
    assert "netlab.service.relay" in imported_modules(NETLAB / "bench" / "lab.py")
