"""A transparent, socket-activated UDP forwarder: the Python successor of systemd-transparent-udp-forwarderd.

systemd listens on UDP ports and hands the sockets over; every datagram is re-sent to a backend with the
original client's address and port as its source, so the backend sees real clients.
"""

from forwarder.errors import (
    ConfigurationError,
    ForwarderError,
    MissingPermissionError,
    OperatingSystemError,
    UnknownHostError,
    UsageError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "ForwarderError",
    "MissingPermissionError",
    "OperatingSystemError",
    "UnknownHostError",
    "UsageError",
    "__version__",
]
