"""`netlab doctor`: checks of what a transparent forward needs, probes of a namespace or this machine."""
