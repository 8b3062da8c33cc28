"""The socket helpers' answers on loopback, no privileges: which address is local, which source the host
would send from, what the cached probes answer when a probe cannot tell, and `--listen` on IPv6."""

import socket

import pytest

from forwarder.io.sockets import LocalAddresses, bind_listener, probe_local, source_toward


def test_a_host_address_is_local_and_a_documentation_address_is_not() -> None:
    assert probe_local("127.0.0.1")
    assert not probe_local("192.0.2.1")


def test_an_address_the_probe_cannot_judge_raises_and_the_cache_takes_it_for_local() -> None:
    # Taken for local, it never gets a transparent socket: the safe side.
    with pytest.raises(socket.gaierror):
        probe_local("256.0.0.1")
    assert LocalAddresses()("256.0.0.1")


def test_the_cache_probes_each_address_once_until_forget_is_called() -> None:
    probed: list[str] = []

    def probe(address: str) -> bool:
        probed.append(address)
        return True

    local = LocalAddresses()
    local.probe = probe
    assert local("198.51.100.1")
    assert local("198.51.100.1")
    assert probed == ["198.51.100.1"]

    local.forget()  # addresses added to or removed from the host are seen again

    assert local("198.51.100.1")
    assert probed == ["198.51.100.1", "198.51.100.1"]


def test_the_source_toward_loopback_is_loopback_and_toward_a_broadcast_address_there_is_none() -> None:
    assert source_toward("127.0.0.1") == "127.0.0.1"
    # The kernel refuses to connect a socket without SO_BROADCAST there: no source to stand in.
    assert source_toward("255.255.255.255") is None


def test_listening_on_the_ipv6_wildcard_is_dual_stack_and_non_blocking() -> None:
    # Dual-stack only on the wildcard: the kernel makes a socket bound to one IPv6 address IPv6-only.
    listener = bind_listener("::", 0, "[::]:0")
    with listener.sock as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert not sock.getblocking()
        assert listener.label == "[::]:0"
