"""Offload features of a node's interfaces (what `ethtool -k/-K` shows and sets), through pyroute2's
ethtool support in a thread that has joined the node's namespace (its ioctl socket is made there)."""

from typing import TYPE_CHECKING

from pyroute2.ethtool import Ethtool

from netlab.errors import UsageError
from netlab.lab import netns

if TYPE_CHECKING:
    from netlab.lab.node import LabNode


def features(node: "LabNode", ifname: str) -> dict[str, bool]:
    """Every offload feature of `ifname` in `node` and whether it is on (e.g. 'rx-gro')."""

    def read() -> dict[str, bool]:
        with Ethtool() as ethtool:
            return {name: bool(f.enable) for name, f in ethtool.get_features(ifname).features.items()}

    return netns.run_in(node.namespace, read)


def set_features(node: "LabNode", ifname: str, wanted: dict[str, bool]) -> dict[str, bool]:
    """Turn features of `ifname` in `node` on or off; returns their previous values (to restore them)."""

    def change() -> dict[str, bool]:
        with Ethtool() as ethtool:
            current = ethtool.get_features(ifname)
            unknown = sorted(set(wanted) - set(current.features))
            if unknown:
                raise UsageError(
                    f"interface {ifname!r} has no offload feature {unknown[0]!r}: "
                    f"expected one of {sorted(current.features)}"
                )
            previous = {name: bool(current.features[name].enable) for name in wanted}
            for name, enable in wanted.items():
                current.features[name].enable = enable
            ethtool.set_features(ifname, current)
            return previous

    return netns.run_in(node.namespace, change)
