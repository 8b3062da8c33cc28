"""`python -m forwarder`: the same entry point as `systemd-transparent-udp-forwarderd`."""

from forwarder.service.cli import main

raise SystemExit(main())
