"""A UDP echo server for lab backends, run as a process inside a node.

It answers every datagram to its sender, prefixed with the source it saw (`seen=IP:PORT;`), so a client
can tell what address the backend saw; it also logs `seen IP:PORT N bytes` for each datagram on stdout
(for senders that cannot receive the answer, such as spoofed ones). With `--record FILE` it appends one
JSON line per datagram (port, source, payload, CLOCK_MONOTONIC time) to FILE, so expectations can check
what arrived at a port the echo server holds (netlab.traffic.expect.EchoRecord). One dual-stack socket
per port.
Usage: python -m netlab.programs.echo [--record FILE] PORT...
"""

import json
import selectors
import socket
import sys
import time
from typing import TextIO


def serve(ports: list[int], record: TextIO | None = None) -> None:
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        selector.register(sock, selectors.EVENT_READ, port)
    print(f"echoing on UDP ports {' '.join(map(str, ports))}", flush=True)
    while True:
        for key, _ in selector.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            data, peer = ready.recvfrom(65535)
            host = peer[0].removeprefix("::ffff:")
            seen = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
            if record is not None:  # before the answer: whoever reads the answer finds the record written
                entry = {"port": key.data, "src": host, "sport": peer[1], "payload": data.hex()}
                record.write(json.dumps(entry | {"time": time.monotonic()}) + "\n")
                record.flush()
            print(f"seen {seen} {len(data)} bytes", flush=True)
            try:
                ready.sendto(f"seen={seen};".encode() + data, peer)
            except OSError as error:
                print(f"reply to {seen} failed: {error}", flush=True)


def main(argv: list[str]) -> int:
    record_path = None
    if argv[:1] == ["--record"] and len(argv) >= 2:
        record_path, argv = argv[1], argv[2:]
    if not argv or not all(port.isdigit() for port in argv):
        print("usage: python -m netlab.programs.echo [--record FILE] PORT...", file=sys.stderr)
        return 64
    if record_path is None:
        serve([int(port) for port in argv])
    else:
        with open(record_path, "a") as record:
            serve([int(port) for port in argv], record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
