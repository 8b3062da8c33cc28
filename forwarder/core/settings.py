"""The options that decide how the forwarder behaves, decided once: one frozen `Settings`, built from the
command line at start-up (forwarder.service.options), read by every layer. The facts derived from several
options (does it relay replies, does it bind the client's address, which send path was asked for, ...) are
properties here, so no layer below the command line derives a mode from flags again. `Settings()` is the
daemon's defaults.
"""

import socket
from dataclasses import dataclass

from forwarder.core.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS
from forwarder.core.proxy_protocol import Network, TrustedSources

# A socket is drained until EAGAIN, but at most this many datagrams at a time, so that under a flood the
# other sockets, STATUS= and WATCHDOG=1 still get their turn (the selector reports the socket again).
MAX_BATCH = 4096
# With replies to relay, a listener gets at most this many datagrams per wake-up: the backend's replies wait
# in the flow sockets meanwhile, and a long drain (4096 datagrams, tens of milliseconds) would let their
# queues fill and the kernel drop replies the forwarder never sees.
RELAY_BATCH = 256

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}  # --prefer-family


@dataclass(frozen=True)
class Settings:
    """The command line's behaviour-deciding options, one field per option, named as the option is."""

    reply: str = "direct"  # --reply: "direct" or "relay"
    send_proxy_protocol: bool = False
    send_path: str | None = None  # --send-path: "raw", "sockets", or None (the default for the rest)
    udp_checksum: str = "none"  # "none" or "compute"
    gso: bool = False
    receive: str = "batch"  # the receive strategy: "batch" or "single"
    max_flows: int = DEFAULT_MAX_FLOWS
    flow_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    stats_interval: float = 10.0
    proxy_protocol_from: tuple[Network, ...] = ()
    prefer_family: str | None = None  # "ipv4", "ipv6" or None
    receive_buffer: int | None = None
    reply_tproxy: int | None = None  # --reply-tproxy PORT: replies come to one socket on PORT (relay mode)

    @property
    def relays(self) -> bool:
        """Replies come back to the forwarder and are relayed to the client (--reply relay, or implied by
        --send-proxy-protocol)."""
        return self.reply == "relay" or self.send_proxy_protocol

    @property
    def binds_client(self) -> bool:
        """Datagrams leave with the client's address as source (IP_TRANSPARENT); not so with
        --send-proxy-protocol, which sends from the host's own address."""
        return not self.send_proxy_protocol

    @property
    def connects_flows(self) -> bool:
        """Flow sockets are connected to the backend: only where they carry replies (in direct mode early
        demux would steal the replies the host must forward)."""
        return self.replies_on_flow_sockets

    @property
    def replies_on_flow_sockets(self) -> bool:
        """Each flow's own socket receives its replies: relay mode, unless the host steers every reply to
        the one tproxy reply socket (--reply-tproxy)."""
        return self.relays and self.reply_tproxy is None

    @property
    def flow_sockets(self) -> bool:
        """Every flow holds a socket of its own: to send from (the sockets path) or to receive its replies
        (relay mode without --reply-tproxy); on the raw path otherwise a flow is only a cached decision."""
        return not self.raw_path or self.replies_on_flow_sockets

    @property
    def prefixes_header(self) -> bool:
        """Every datagram leaves after its flow's PROXY protocol v2 header (--send-proxy-protocol)."""
        return self.send_proxy_protocol

    @property
    def batch_budget(self) -> int:
        """Datagrams one drain of a listener handles at most: fewer when replies wait to be relayed."""
        return RELAY_BATCH if self.relays else MAX_BATCH

    @property
    def raw_path(self) -> bool:
        """The raw send path was asked for: the default, unless --send-path sockets, --gso (which sends from
        a flow's own socket) or --send-proxy-protocol (which binds no client address)."""
        return self.binds_client and (self.send_path or ("sockets" if self.gso else "raw")) == "raw"

    @property
    def needs_capability_after_start(self) -> bool:
        """Something after start-up opens a transparent socket bound to a client's address (the sockets
        path, relay mode's flow sockets), given the send path asked for is the one used. The tproxy reply
        socket is opened at start-up, so --reply-tproxy on the raw path needs none afterwards."""
        return self.binds_client and self.flow_sockets

    def needs_pktinfo(self, wildcard: bool) -> bool:
        """A listener must read each datagram's local address (IP_PKTINFO): in relay mode the reply leaves
        from it, and a `wildcard` listener's own address does not say which one it was."""
        return self.relays and wildcard

    @property
    def checksum(self) -> bool:
        """The raw path computes IPv4 UDP checksums (--udp-checksum compute) instead of sending 0."""
        return self.udp_checksum == "compute"

    @property
    def family(self) -> socket.AddressFamily | None:
        """The address family --prefer-family names, or None."""
        return None if self.prefer_family is None else FAMILIES[self.prefer_family]

    def trusted(self) -> TrustedSources | None:
        """A fresh judge of whose PROXY headers are believed (--proxy-protocol-from), or None: nobody's."""
        return TrustedSources(self.proxy_protocol_from) if self.proxy_protocol_from else None
