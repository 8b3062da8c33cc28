"""The forwarder as a service: started under systemd-socket-activate, its sd_notify messages received,
the host's reply path set up (direct: replypath; relay: relay; a container host's NAT: containers), and
its bound sockets read from /proc/PID/net/udp."""
