"""How the forwarder writes a socket address for people (logs, errors, STATUS=, metrics labels): the one
home of `192.0.2.1:53` / `[2001:db8::1]:53`, so no line prints a Python tuple.
"""

from collections.abc import Sequence


def endpoint_text(address: Sequence[object]) -> str:
    """`(host, port)` or an IPv6 `(host, port, flowinfo, scope_id)` as `host:port` or `[host]:port` (a
    scope id, when there is one, as `[fe80::1%2]:53`)."""
    host, port = str(address[0]), address[1]
    if ":" not in host:
        return f"{host}:{port}"
    if len(address) > 3 and address[3] and "%" not in host:
        host = f"{host}%{address[3]}"
    return f"[{host}]:{port}"
