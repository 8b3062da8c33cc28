"""Programs that run inside a node (`python -m netlab.programs.NAME`): the scapy agent, the echo server,
fdpass, the load generator, the per-datagram reference, sysfs writes. Their rule: import nothing heavy at
module level and nothing of netlab outside this subpackage (ruff's banned-api holds it), so each starts
in a few tens of milliseconds and works without pyroute2."""
