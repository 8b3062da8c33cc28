"""Topologies from TOML (tomllib): the file format, and errors that name the file, element and value.

    description = "..."
    [nodes.host.sysctl]                      # one [nodes.NAME] table per node; sysctl is optional
    "net.ipv4.ip_forward" = 1
    [[nodes.host.tproxy]]                    # optional: tproxy steering in the node (topology.steering)
    version = 4
    to_port = 27000
    dports = "27000-27099"
    [[links]]                                # a veth pair; ifname defaults to "to-PEER"; mtu optional
    a = { node = "client", addresses = ["198.51.100.10/24"] }
    b = { node = "host", ifname = "eth0", addresses = ["198.51.100.1/24"] }
    mtu = 1500
    [[devices]]                              # a device inside a node: kind = "bridge" (as docker0)
    node = "host"
    name = "docker0"
    kind = "bridge"
    addresses = ["192.0.2.1/24"]             # the node's address on the bridged network
    [[links]]                                # a link end with master = BRIDGE is a port of that bridge
    a = { node = "host", ifname = "veth-c1", master = "docker0" }
    b = { node = "c1", ifname = "eth0", addresses = ["192.0.2.2/24"] }
    [[routes]]                               # to = CIDR or "default" (family of via)
    node = "client"
    to = "default"
    via = "198.51.100.1"
    [roles]                                  # optional: who is who, for `netlab doctor` in lab mode
    host = "host"                            # runs the forwarder
    backend = "backend"                      # receives the forwarded datagrams
    clients = ["client"]                     # send to the host
    spoofed = ["203.0.113.0/24"]             # sources the clients craft without owning them

`topology_from_dict` takes the same structure already parsed, so a scenario file can inline a topology.
"""

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netlab.errors import TopologyError
from netlab.topology.model import Roles, Topology
from netlab.topology.steering import parse_steering, topology_fail

_TOP_KEYS = {"description", "nodes", "devices", "links", "routes", "roles"}
_ROLE_KEYS = {"host", "backend", "clients", "spoofed"}
_NODE_KEYS = {"sysctl", "tproxy"}
_LINK_KEYS = {"a", "b", "mtu"}
_END_KEYS = {"node", "ifname", "addresses", "master"}
_DEVICE_KEYS = {"node", "name", "kind", "addresses"}
_ROUTE_KEYS = {"node", "to", "via"}


def load_topology_file(path: Path | str) -> Topology:
    """Read, parse and validate the topology in TOML file `path`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise TopologyError(f"cannot read topology file {str(path)!r}: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TopologyError(f"{path}: not valid TOML: {error}") from None
    return topology_from_dict(data, source=str(path))


# Top-level keys only a scenario file has: seeing one, say which kind of file this is.
_SCENARIO_KEYS = {"topology", "forwarder", "setup", "echo", "reply_path", "traffic", "expect"}


def topology_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Topology:
    """Build and validate a Topology from TOML-shaped data; `source` prefixes every error message."""
    scenario_keys = sorted(_SCENARIO_KEYS & set(data))
    if scenario_keys:
        raise TopologyError(
            f"{source}: this is a scenario file (it has {', '.join(scenario_keys)}), not a topology: "
            "run it with `netlab run FILE`, or give a topology (shipped name or file)"
        )
    _check_keys(data, _TOP_KEYS, "top level", source)
    topology = Topology(source=source, description=_typed(data, "description", str, "top level", source, ""))
    nodes = _typed(data, "nodes", dict, "top level", source, {})
    if not nodes:
        raise TopologyError(f"{source}: no [nodes.NAME] table: a topology needs at least one node")
    for name, node in nodes.items():
        element = f"nodes.{name}"
        if not isinstance(node, dict):
            raise TopologyError(f"{source}: {element}: expected a table, got {node!r}")
        _check_keys(node, _NODE_KEYS, element, source)
        topology.node(name)
        for key, value in _typed(node, "sysctl", dict, element, source, {}).items():
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TopologyError(
                    f"{source}: {element}.sysctl: value {value!r} of {key!r} must be a string or integer"
                )
            topology.sysctl(name, key, str(value))
        for index, table in enumerate(_typed(node, "tproxy", list, element, source, [])):
            where = f"{element}.tproxy[{index}]"
            if not isinstance(table, dict):
                raise TopologyError(f"{source}: {where}: expected a table, got {table!r}")
            topology.tproxy(parse_steering(table, name, topology_fail(source), where))
    for index, device in enumerate(_typed(data, "devices", list, "top level", source, [])):
        element = f"devices[{index}]"
        if not isinstance(device, dict):
            raise TopologyError(f"{source}: {element}: expected a table, got {device!r}")
        _check_keys(device, _DEVICE_KEYS, element, source)
        for key in ("node", "name", "kind"):
            if not isinstance(device.get(key), str):
                raise TopologyError(f"{source}: {element}.{key}: expected a string, got {device.get(key)!r}")
        topology.device(
            device["node"],
            device["name"],
            kind=device["kind"],
            addresses=_typed(device, "addresses", list, element, source, []),
            label=f"{element} ({device['kind']} {device['name']!r} in {device['node']!r})",
        )
    for index, link in enumerate(_typed(data, "links", list, "top level", source, [])):
        element = f"links[{index}]"
        if not isinstance(link, dict):
            raise TopologyError(f"{source}: {element}: expected a table, got {link!r}")
        _check_keys(link, _LINK_KEYS, element, source)
        a = _endpoint(link, "a", element, source)
        b = _endpoint(link, "b", element, source)
        mtu = link.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)):
            raise TopologyError(f"{source}: {element}.mtu: {mtu!r} must be an integer from 68 to 65535")
        topology.link(
            a["node"],
            b["node"],
            a_addresses=a["addresses"],
            b_addresses=b["addresses"],
            a_ifname=a["ifname"],
            b_ifname=b["ifname"],
            mtu=mtu,
            label=f"{element} ({a['node']}<->{b['node']})",
            a_master=a["master"],
            b_master=b["master"],
        )
    for index, route in enumerate(_typed(data, "routes", list, "top level", source, [])):
        element = f"routes[{index}]"
        if not isinstance(route, dict):
            raise TopologyError(f"{source}: {element}: expected a table, got {route!r}")
        _check_keys(route, _ROUTE_KEYS, element, source)
        for key in ("node", "to", "via"):
            if not isinstance(route.get(key), str):
                raise TopologyError(f"{source}: {element}.{key}: expected a string, got {route.get(key)!r}")
        topology.route(
            route["node"],
            route["to"],
            route["via"],
            label=f"{element} ({route['to']!r} in {route['node']!r})",
        )
    topology.roles = _roles(data, source)
    topology.validate()
    return topology


def _roles(data: Mapping[str, Any], source: str) -> Roles | None:
    table = _typed(data, "roles", dict, "top level", source, None) if "roles" in data else None
    if table is None:
        return None
    _check_keys(table, _ROLE_KEYS, "roles", source)
    roles = Roles()
    for key in ("host", "backend"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise TopologyError(f"{source}: roles.{key}: expected a node name, got {value!r}")
        setattr(roles, key, value)
    for key in ("clients", "spoofed"):
        values = _typed(table, key, list, "roles", source, [])
        if not all(isinstance(value, str) for value in values):
            raise TopologyError(f"{source}: roles.{key}: expected a list of strings, got {values!r}")
        setattr(roles, key, list(values))
    return roles


def _endpoint(link: Mapping[str, Any], side: str, element: str, source: str) -> dict[str, Any]:
    end = link.get(side)
    where = f"{element}.{side}"
    if not isinstance(end, dict):
        raise TopologyError(
            f'{source}: {where}: expected {{ node = "NAME", addresses = [...] }}, got {end!r}'
        )
    _check_keys(end, _END_KEYS, where, source)
    node = end.get("node")
    if not isinstance(node, str):
        raise TopologyError(f"{source}: {where}.node: expected a node name, got {node!r}")
    ifname = end.get("ifname")
    if ifname is not None and not isinstance(ifname, str):
        raise TopologyError(f"{source}: {where}.ifname: expected a string, got {ifname!r}")
    master = end.get("master")
    if master is not None and not isinstance(master, str):
        raise TopologyError(f"{source}: {where}.master: expected a bridge name, got {master!r}")
    addresses = _typed(end, "addresses", list, where, source, [])
    return {"node": node, "ifname": ifname, "addresses": addresses, "master": master}


def _check_keys(table: Mapping[str, Any], allowed: set[str], element: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            raise TopologyError(
                f"{source}: {element}: unknown key {key!r}; expected one of {sorted(allowed)}"
            )


def _typed(table: Mapping[str, Any], key: str, kind: type, element: str, source: str, default: Any) -> Any:  # noqa: PLR0913, PLR0917 - one typed field lookup with its context
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise TopologyError(f"{source}: {element}.{key}: expected a {kind.__name__}, got {value!r}")
    return value
