"""The forwarder's Linux I/O around the core: the ABI through ctypes, receiving and sending strategies,
listening and flow sockets, and the loop that executes the core's actions.
"""
