"""The lab: network namespaces, nodes, the processes and captures inside them, building links, and the
registry that lets the next run reap what a killed one left. Everything here may import pyroute2."""
