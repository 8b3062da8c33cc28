"""netlab.service.relay's local form of the tproxy variant: a backend on the host itself (`--net=host`,
127.0.0.1 or ::1) whose replies reach the one reply socket. What each piece does, why the usual recipe for
locally generated traffic (a mark set in an nft output chain) is not the one used, the commands an operator
types (pasted into a shell, as the README prints them), and removal.

A reply the host's own program sends toward a client is output, which never passes prerouting, where tproxy
works. The loopback rule (`from 127.0.0.1 iif lo ipproto udp sport PORT lookup T`, T's only route local)
sends it out through lo instead, and back in there, where the nft rule on `iifname "lo"` hands it to the
reply socket with its client as the original destination.
"""

import shlex
import socket
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from forwarder.core.addresses import decode_sockaddr
from forwarder.io.control import origdst_local
from netlab import Lab, load_topology
from netlab.lab.nft import apply_ruleset
from netlab.lab.tproxy import steer, transparent_socket
from netlab.service.relay import install_local_relay_routing, install_relay_tproxy, relay_tproxy_commands

LOCAL = {4: "127.0.0.1", 6: "::1"}
CLIENT = {4: "198.51.100.10", 6: "2001:db8:51::10"}  # the dual-stack topology's client, off the host
PORT, REPLY_PORT, CLIENT_PORT = 5353, 27999, 40000


def test_the_local_form_puts_the_rule_on_lo_and_the_loopback_rule_in_place_of_the_fwmark_rule() -> None:
    assert relay_tproxy_commands("127.0.0.1", [PORT, (6000, 6010)], 5399, interface="eth1") == [
        "nft add table ip transparent_udp_forwarder_replies",
        "nft 'add chain ip transparent_udp_forwarder_replies prerouting "
        "{ type filter hook prerouting priority mangle; policy accept; }'",
        'nft add rule ip transparent_udp_forwarder_replies prerouting iifname "lo" ip saddr 127.0.0.1 '
        "meta l4proto udp udp sport { 5353, 6000-6010 } fib daddr type != local "
        "meta mark set 0x1 tproxy to :5399 accept",
        "ip rule add from 127.0.0.1 iif lo ipproto udp sport 5353 lookup 100",
        "ip rule add from 127.0.0.1 iif lo ipproto udp sport 6000-6010 lookup 100",
        "ip route add local 0.0.0.0/0 dev lo table 100",
    ]
    six = relay_tproxy_commands("::1", PORT, 5399)
    assert six[2].startswith('nft add rule ip6 transparent_udp_forwarder_replies prerouting iifname "lo" ')
    assert six[3:] == [
        "ip -6 rule add from ::1 iif lo ipproto udp sport 5353 lookup 100",
        "ip -6 route add local ::/0 dev lo table 100",
    ]


def test_the_readmes_local_recipe_is_what_the_lab_steers_with() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for backend in ("127.0.0.1", "::1"):
        assert "\n".join(relay_tproxy_commands(backend, PORT, 5399)) + "\n" in readme


def reply_socket_receives(
    sock: socket.socket, timeout: float = 1.0
) -> tuple[bytes, str, tuple[str, int]] | None:
    """The next datagram on the reply socket: payload, source address, original destination (None: none)."""
    sock.settimeout(timeout)
    try:
        data, ancillary, flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(28))
    except TimeoutError:
        return None
    raw = origdst_local(ancillary, flags)
    assert raw, f"no original destination on {data!r}"
    host, port = decode_sockaddr(raw)[:2]
    return data, peer[0], (host, port)


def local_backend(lab: Lab, version: int) -> socket.socket:
    """The backend on the host itself, bound to the loopback address and PORT."""
    return lab["host"].udp_socket(LOCAL[version], PORT)


@pytest.mark.privileged
@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_the_operators_commands_pasted_into_a_shell_steer_a_local_backends_reply_to_the_reply_socket(
    lab: Lab, version: int
) -> None:
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    reply_socket = transparent_socket(host, version, REPLY_PORT)
    backend = local_backend(lab, version)
    for command in relay_tproxy_commands(LOCAL[version], PORT, REPLY_PORT):
        host.check(shlex.split(command))

    backend.sendto(b"reply", (CLIENT[version], CLIENT_PORT))

    assert reply_socket_receives(reply_socket) == (b"reply", LOCAL[version], (CLIENT[version], CLIENT_PORT))


@pytest.mark.privileged
@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_without_the_loopback_rule_the_reply_never_reaches_prerouting(lab: Lab, version: int) -> None:
    # IPv4 refuses a 127.0.0.1 source on a route off the host at once (EINVAL); IPv6 sends it to the
    # client's link, which drops it: neither passes prerouting, so the nft rule alone does nothing.
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    reply_socket = transparent_socket(host, version, REPLY_PORT)
    backend = local_backend(lab, version)
    steering = install_relay_tproxy(host, LOCAL[version], PORT, REPLY_PORT, rule=False)
    assert not steering.rules

    if version == 4:
        with pytest.raises(OSError, match="Invalid argument"):
            backend.sendto(b"reply", (CLIENT[version], CLIENT_PORT))
    else:
        backend.sendto(b"reply", (CLIENT[version], CLIENT_PORT))

    assert reply_socket_receives(reply_socket, timeout=0.3) is None


@pytest.mark.privileged
@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_without_the_nft_rule_the_looped_reply_reaches_no_socket(lab: Lab, version: int) -> None:
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    reply_socket = transparent_socket(host, version, REPLY_PORT)
    backend = local_backend(lab, version)
    steering = install_relay_tproxy(host, LOCAL[version], PORT, REPLY_PORT)
    host.check(["nft", "delete", "table", "ip" if version == 4 else "ip6", steering.nft_table])

    backend.sendto(b"reply", (CLIENT[version], CLIENT_PORT))  # delivered locally: no socket holds the client

    assert reply_socket_receives(reply_socket, timeout=0.3) is None


@pytest.mark.privileged
@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_removing_the_local_form_leaves_no_rule_route_or_table(lab: Lab, version: int) -> None:
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    steering = install_relay_tproxy(host, LOCAL[version], [PORT, (6000, 6010)], REPLY_PORT)
    assert (len(steering.rules), len(steering.routes), steering.nft_loaded) == (2, 1, True)

    steering.remove()
    steering.remove()  # twice: nothing left to remove is no error

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with IPRoute(netns=host.namespace) as ipr:
        assert [r for r in ipr.get_rules(family=family) if r.get_attr("FRA_TABLE") == steering.table] == []
        assert list(ipr.get_routes(family=family, table=steering.table)) == []
    assert "netlab_tproxy_" not in host.check(["nft", "list", "ruleset"])


@pytest.mark.privileged
@pytest.mark.parametrize(("version", "delivered"), [(4, False), (6, True)], ids=["ipv4", "ipv6"])
def test_a_mark_set_in_the_output_hook_comes_too_late_for_an_ipv4_loopback_source(
    lab: Lab, version: int, delivered: bool
) -> None:
    # The usual recipe for locally generated traffic (an nft `type route hook output` chain marking the
    # replies, the fwmark rule and local route, the tproxy rule on lo) is not the README's: for IPv4 the
    # sending socket's own route lookup refuses a 127.0.0.1 source toward the client's link (EINVAL) before
    # the output hook runs, so the mark is never set (its counter stays 0); only net.ipv4.conf.<out>.
    # route_localnet=1 would let it through, and that also opens the link to 127/8 traffic. IPv6 has no
    # such check before the hook: there the mark reroutes the reply through lo and it is steered.
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    reply_socket = transparent_socket(host, version, REPLY_PORT)
    backend = local_backend(lab, version)
    steering = steer(
        host, version=version, to_port=REPLY_PORT, saddr=LOCAL[version], sports=PORT, iifname="lo"
    )
    ip = "ip" if version == 4 else "ip6"
    apply_ruleset(
        host,
        f"""
        table {ip} netlab_output_mark {{
            chain output {{
                type route hook output priority mangle; policy accept;
                {ip} saddr {LOCAL[version]} udp sport {PORT} meta mark set {steering.mark:#x}
            }}
        }}
        """,
    )
    lab.defer(host.check, ["nft", "delete", "table", ip, "netlab_output_mark"])

    try:
        backend.sendto(b"reply", (CLIENT[version], CLIENT_PORT))
        refused = None
    except OSError as error:
        refused = error.errno

    assert refused == (None if delivered else 22)
    received = reply_socket_receives(reply_socket, timeout=1.0 if delivered else 0.3)
    assert received == ((b"reply", LOCAL[version], (CLIENT[version], CLIENT_PORT)) if delivered else None)


@pytest.mark.privileged
@pytest.mark.parametrize(("version", "steered"), [(4, True), (6, False)], ids=["ipv4", "ipv6"])
def test_go_mmproxys_broad_loopback_rule_serves_ipv4_but_blinds_the_ipv6_fib_check(
    lab: Lab, version: int, steered: bool
) -> None:
    # nftables' IPv6 `fib daddr type` asks the routing with the reply's source (::1) and `iif lo`, which
    # `from ::1 iif lo lookup T` answers `local` for every destination: the rule then steers nothing. The
    # IPv4 fib asks only the local table. So the README's rule names the backend's port, as here by default.
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    reply_socket = transparent_socket(host, version, REPLY_PORT)
    backend = local_backend(lab, version)
    steering = install_relay_tproxy(host, LOCAL[version], PORT, REPLY_PORT, rule=False)
    install_local_relay_routing(host, versions=[version], table=steering.table)

    backend.sendto(b"reply", (CLIENT[version], CLIENT_PORT))

    expected = (b"reply", LOCAL[version], (CLIENT[version], CLIENT_PORT)) if steered else None
    assert reply_socket_receives(reply_socket, timeout=1.0 if steered else 0.3) == expected
