"""`netlab send` and `netlab sniff`: crafting datagrams from a node of a lab that is up, and watching them."""

import argparse
import json
import math
import sys

from netlab.addresses import ip_version, parse_endpoint
from netlab.cli.common import UP_LAB_KEPT, Commands, add_lab_option, print_json, require_privileges
from netlab.cli.labs import node_namespace
from netlab.errors import AddressError, PacketError, UsageError
from netlab.programs.crafted import MIN_FRAGMENT, check_port, check_size


def _checked_send_options(args: argparse.Namespace) -> tuple[str, int, int]:
    """(destination, port, IP version) of `netlab send`, every option checked before a lab is touched:
    UsageError (64) naming the option and its value otherwise."""
    try:
        dst, dport = parse_endpoint(args.to)
    except AddressError as error:
        raise UsageError(f"netlab send: --to: {error}") from None
    version = ip_version(dst)
    if args.src is not None:
        try:
            source_version = ip_version(args.src)
        except AddressError as error:
            raise UsageError(f"netlab send: --src: {error}") from None
        if source_version != version:
            raise UsageError(
                f"netlab send: --src {args.src!r} is IPv{source_version} but --to {args.to!r} is IPv{version}"
            )
    try:
        check_port(args.sport, "--sport")
        if args.size is not None:
            check_size(args.size, version)
    except PacketError as error:
        raise UsageError(f"netlab send: {'--' if str(error).startswith('size') else ''}{error}") from None
    if args.count < 1:
        raise UsageError(f"netlab send: --count {args.count!r}: expected 1 or more")
    least = MIN_FRAGMENT[version]
    if args.fragment_size != 0 and not least <= args.fragment_size <= 65535:
        raise UsageError(
            f"netlab send: --fragment-size {args.fragment_size!r}: expected 0 (only above the MTU) "
            f"or {least} to 65535 for IPv{version}"
        )
    return dst, dport, version


def cmd_send(args: argparse.Namespace) -> int:
    from netlab.lab.detached import attach
    from netlab.traffic.payload import make_payload

    dst, dport, version = _checked_send_options(args)
    require_privileges()
    payload = make_payload(args.size) if args.size is not None else args.payload.encode()
    with attach(args.lab) as (lab, topology):
        node = lab[args.node]
        src = args.src
        if src is None:
            own = [a for a in topology.addresses_of(args.node) if ip_version(a) == version]
            if not own:
                raise UsageError(f"node {args.node!r} has no IPv{version} address: give --src")
            src = own[0]
        node.send_udp(
            src=src,
            dst=dst,
            sport=args.sport,
            dport=dport,
            payload=payload,
            count=args.count,
            fragment_size=args.fragment_size,
        )
    sent = {"from": args.node, "src": src, "sport": args.sport, "to": args.to, "size": len(payload)}
    sent["count"] = args.count
    if args.json:
        print_json(sent)
    else:
        print(f"sent {args.count} x {len(payload)} bytes from {args.node} as {src}:{args.sport} to {args.to}")
    return 0


def cmd_sniff(args: argparse.Namespace) -> int:
    from netlab.traffic.sniff import Sniffer

    if args.count is not None and args.count < 1:
        raise UsageError(f"netlab sniff: --count {args.count}: expected 1 or more")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(
            f"netlab sniff: --timeout {args.timeout}: expected a finite number of seconds above 0"
        )
    require_privileges()
    namespace = node_namespace(args.lab, args.node)
    datagrams = fragments = 0
    with Sniffer(namespace) as sniffer:
        print(f"sniffing UDP on {args.node} ({namespace}); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            for seen in sniffer.datagrams(args.count, args.timeout):
                datagrams += not seen.more_fragments
                fragments += seen.fragment
                text = json.dumps(seen.to_json(), sort_keys=True) if args.json else seen.line()
                print(text, flush=True)
        except KeyboardInterrupt:
            pass
    print(f"{datagrams} datagrams" + (f" ({fragments} fragments)" if fragments else ""), file=sys.stderr)
    return 0


def register(commands: Commands) -> None:
    """Add send and sniff."""
    send = commands.add_parser("send", help="craft UDP datagrams (any source, also spoofed) from a node")
    add_lab_option(send)
    send.add_argument("--from", dest="node", required=True, metavar="NODE", help="the node that sends")
    send.add_argument("--to", required=True, metavar="ADDR:PORT", help="destination, [v6]:port for IPv6")
    send.add_argument("--src", metavar="ADDRESS", help="source address (spoofed); default the node's own")
    send.add_argument("--sport", type=int, default=4242, metavar="PORT", help="source port (default 4242)")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--payload", default="", metavar="TEXT", help="the payload (UTF-8)")
    body.add_argument("--size", type=int, metavar="BYTES", help="a patterned payload of this many bytes")
    send.add_argument("--count", type=int, default=1, metavar="N", help="how many times (default 1)")
    send.add_argument("--fragment-size", type=int, default=0, metavar="BYTES", help="force fragments")
    send.add_argument("--json", action="store_true", help="describe what was sent as JSON")
    send.set_defaults(handler=cmd_send, after_interrupt=UP_LAB_KEPT)
    sniff = commands.add_parser("sniff", help="print UDP datagrams seen on a node's interfaces")
    add_lab_option(sniff)
    sniff.add_argument("node", metavar="NODE")
    sniff.add_argument("--count", type=int, metavar="N", help="stop after N datagrams")
    sniff.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this long")
    sniff.add_argument("--json", action="store_true", help="one JSON object per line")
    sniff.set_defaults(handler=cmd_sniff, after_interrupt=UP_LAB_KEPT)
