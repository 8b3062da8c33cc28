"""The daemon around the I/O: the command line, socket activation, sd_notify, logs, metrics, destination
resolution and the start-up checks.
"""
