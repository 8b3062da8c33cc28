"""A UDP echo server for lab backends, run as a process inside a node.

It answers every datagram to its sender, prefixed with the source it saw (`seen=IP:PORT;`), so a client
can tell what address the backend saw; it also logs `seen IP:PORT N bytes` for each datagram on stdout
(for senders that cannot receive the answer, such as spoofed ones). One dual-stack socket per port.
Usage: python -m netlab.programs.echo PORT...
"""

import selectors
import socket
import sys


def serve(ports: list[int]) -> None:
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        selector.register(sock, selectors.EVENT_READ)
    print(f"echoing on UDP ports {' '.join(map(str, ports))}", flush=True)
    while True:
        for key, _ in selector.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            data, peer = ready.recvfrom(65535)
            host = peer[0].removeprefix("::ffff:")
            seen = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
            print(f"seen {seen} {len(data)} bytes", flush=True)
            try:
                ready.sendto(f"seen={seen};".encode() + data, peer)
            except OSError as error:
                print(f"reply to {seen} failed: {error}", flush=True)


def main(argv: list[str]) -> int:
    if not argv or not all(port.isdigit() for port in argv):
        print("usage: python -m netlab.programs.echo PORT...", file=sys.stderr)
        return 64
    serve([int(port) for port in argv])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
