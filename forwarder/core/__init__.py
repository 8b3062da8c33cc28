"""The forwarder's decisions, with no I/O: datagram metadata in, actions out (in the manner of aioquic's
connection). Nothing here opens a socket, reads a clock or the environment, or logs;
tests/test_forwarder_layers.py keeps it so.
"""
