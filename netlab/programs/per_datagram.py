"""The reference contender of `netlab bench`: the C original's per-datagram algorithm, in Python.

For every datagram: a new socket, IP_TRANSPARENT, bind to the client's address, sendto, close. Started
like the forwarder (socket activation, one destination per socket, READY=1). Not for production.
Usage: python -m netlab.programs.per_datagram HOST:PORT...
"""

import os
import selectors
import socket
import sys

from netlab.addresses import parse_endpoint


def main(argv: list[str]) -> int:
    if not argv or not os.environ.get("LISTEN_FDS", "").isdigit():
        print("usage: python -m netlab.programs.per_datagram HOST:PORT... (with LISTEN_FDS)", file=sys.stderr)
        return 64
    count = int(os.environ["LISTEN_FDS"])
    listeners = [socket.socket(fileno=3 + index) for index in range(count)]
    destinations = [parse_endpoint(text) for text in argv]
    selector = selectors.DefaultSelector()
    for listener, destination in zip(listeners, destinations, strict=True):
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, destination)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
            manager.sendto(b"READY=1", notify)
    buffer = bytearray(65536)
    while True:
        for key, _ in selector.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            while True:
                try:
                    size, client = ready.recvfrom_into(buffer)
                except BlockingIOError:
                    break
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                        out.setsockopt(socket.IPPROTO_IP, socket.IP_TRANSPARENT, 1)
                        out.bind(client)
                        out.sendto(memoryview(buffer)[:size], key.data)
                except OSError:
                    continue


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
