"""Relay mode under a burst, under systemd-socket-activate: the backend answers 1,000 clients at once, and
the forwarder, which gathers the replies of many flow sockets and sends them with one sendmmsg per
listener, must deliver every reply, each to its own client, from the address that client asked.

    client 198.51.100.10 (1,000 sockets) --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend
"""

import pytest
from e2e_helpers import status_has
from test_e2e_relay import RELAY, client_socket, relay_deployment

from forwarder.io.sockets import set_receive_buffer
from netlab import Lab, start_forwarder
from netlab.service.relay import install_relay_route

pytestmark = pytest.mark.privileged

CLIENTS = 1000
REPLIES = 3  # per client, all sent before the first is read
ASKED = ("198.51.100.1", 53)


def test_a_burst_of_replies_to_1000_clients_arrives_complete_and_each_at_its_own_client(lab: Lab) -> None:
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    backend = lab["backend"].udp_socket("192.0.2.2", 5353)
    backend.settimeout(5)
    set_receive_buffer(backend, 4 << 20)
    forwarder = start_forwarder(
        lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=[*RELAY, "--max-flows", "4096"]
    )
    clients = [client_socket(lab, "198.51.100.10") for _ in range(CLIENTS)]
    for client in clients:
        lab.defer(client.close)
    clients[0].sendto(b"ask", ASKED)  # starts the forwarder
    forwarder.wait_ready()
    askers: dict[tuple[str, int], bytes] = {}
    askers.update([backend.recvfrom(100)[::-1]])
    for start in range(1, CLIENTS, 100):  # in steps the listener's queue holds
        for client in clients[start : start + 100]:
            client.sendto(b"ask", ASKED)
        askers.update(backend.recvfrom(100)[::-1] for _ in clients[start : start + 100])
    # Transparent: the backend saw each client's own address and port.
    assert set(askers) == {client.getsockname() for client in clients}

    for serial in range(REPLIES):
        for asker in askers:
            backend.sendto(b"to %d;%d" % (asker[1], serial), asker)

    for client in clients:
        port = client.getsockname()[1]
        arrived = [client.recvfrom(100) for _ in range(REPLIES)]
        assert sorted(arrived) == [(b"to %d;%d" % (port, serial), ASKED) for serial in range(REPLIES)]
    total = CLIENTS * REPLIES
    forwarder.wait_status(status_has(f"{total} replies relayed, 0 replies dropped"))
