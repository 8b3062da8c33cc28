"""The error queues of the sockets that send as the client (IP_RECVERR): each ICMP error about the
backend read, counted by the machine by type and logged (rate-limited); and the rule of every send path,
whether a failed send was an earlier datagram's ICMP error (then it is sent once more).
"""

import socket
import struct
from collections.abc import Container

from forwarder.core.addresses import decode_sockaddr, endpoint_text, plain_address
from forwarder.core.flows import Flow
from forwarder.core.icmp import QueuedError, failed_by_pending_error
from forwarder.core.machine import ForwardingMachine
from forwarder.io.linux import CONTROL_SIZE, MSG_ERRQUEUE, parse_queued_error
from forwarder.io.rawsend import UDP_HEADER
from forwarder.io.repeats import RepeatSummary

# A queue is read until EAGAIN, but at most this many entries at a time.
MAX_ERRORS = 256


class ClientText:
    """A drop's client for the log line, decoded only if the line is written."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes | None) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return "?" if self.raw is None else endpoint_text(decode_sockaddr(self.raw))


class ErrorQueues:
    """Reads error queues for the engine: `machine` counts, `repeats` logs, `targets` are our backends."""

    def __init__(
        self, machine: ForwardingMachine, repeats: RepeatSummary, targets: Container[tuple[str, int]]
    ) -> None:
        self.machine = machine
        self.repeats = repeats
        self._targets = targets

    def read(self, flow: Flow) -> list[QueuedError | None]:
        """Read `flow`'s error queue; count (and log, rate-limited) each ICMP error; return the entries
        read (None for one that carried no error)."""
        sock = flow.socket
        read: list[QueuedError | None] = []
        while sock is not None and len(read) < MAX_ERRORS:
            try:
                _, ancillary, _, _ = sock.recvmsg(1, CONTROL_SIZE, MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                return read
            error = parse_queued_error(ancillary)
            read.append(error)
            if error is None:
                continue
            name = self.machine.icmp_error(flow, error)
            self.repeats.report(
                "icmp:" + name,
                "ICMP error (%s) from %s about datagrams of %s to %s on %s",
                name,
                error.offender or "?",
                ClientText(flow.raw_peer),
                flow.path.destination,
                flow.path.name,
            )
        return read

    def read_raw(self, sock: socket.socket) -> list[QueuedError | None]:
        """Read a raw send socket's error queue; return the entries read (None for one that carried no
        error). It gets the ICMP errors about every UDP datagram of the host, so only those about datagrams
        to a destination of ours are counted (and logged, rate-limited), and only where flows hold no
        socket (direct mode, --reply-tproxy): a flow's own socket gets the same error and counts it."""
        read: list[QueuedError | None] = []
        while len(read) < MAX_ERRORS:
            try:
                data, ancillary, _, offender = sock.recvmsg(UDP_HEADER, CONTROL_SIZE, MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                return read
            error = parse_queued_error(ancillary)
            read.append(error)
            if error is None or self.machine.settings.flow_sockets or len(data) < UDP_HEADER:
                continue
            client_port, port = struct.unpack_from("!HH", data)
            backend = (str(plain_address(str(offender[0]))), port)
            if backend not in self._targets:
                continue
            name = self.machine.icmp_error(None, error)
            self.repeats.report(
                "icmp:" + name,
                "ICMP error (%s) from %s about datagrams of port %s to %s",
                name,
                error.offender or "?",
                client_port,
                endpoint_text(backend),
            )
        return read

    def raw_failed_by_pending_error(self, sock: socket.socket, error_number: int) -> bool:
        """A send on the raw socket `sock` just failed with `error_number`: read its error queue, and say
        whether an earlier datagram's ICMP error is what failed it (the rule of every send path)."""
        return failed_by_pending_error(error_number, self.read_raw(sock))
