"""Impairing a link: random packet loss with nftables (`numgen random`), since this kernel has no sch_netem.

Loss is applied where packets enter a node (prerouting, before anything else), so it hits crafted packets
too (scapy sends below the sender's netfilter). ICMPv6 is spared: losing neighbour discovery would stall the
link instead of dropping datagrams. Delay, reordering and duplication need netem; asking for them probes the
kernel with pyroute2 and raises ImpairmentUnavailableError naming what is missing when it is not there.
"""

from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netlab.errors import ImpairmentUnavailableError, NetlabError
from netlab.lab.nft import apply_ruleset, rule_packets
from netlab.lab.node import LabNode

TABLE = "netlab_impair"
SCALE = 1_000_000  # loss resolution: parts per million


@dataclass
class LossRule:
    """Loss installed on `ifname` of `node`; `dropped()` reads the rule's counter."""

    node: LabNode
    ifname: str
    probability: float

    def dropped(self) -> int:
        """How many packets this rule has dropped so far (from the nft counter)."""
        return rule_packets(self.node, "inet", TABLE, self.comment)

    @property
    def comment(self) -> str:
        return f"loss {self.ifname}"


def loss_ruleset(ifname: str, probability: float) -> str:
    """The nft script that drops incoming packets on `ifname` with `probability` (0..1)."""
    if not 0.0 <= probability <= 1.0:
        raise NetlabError(f"loss probability {probability!r} must be from 0 to 1")
    threshold = round(probability * SCALE)
    # nft refuses a comparison with SCALE itself (out of the numgen range): certain loss needs no coin.
    coin = "" if threshold >= SCALE else f"numgen random mod {SCALE} < {threshold} "
    return f"""table inet {TABLE} {{
    chain prerouting {{
        type filter hook prerouting priority -400; policy accept;
        iifname "{ifname}" meta l4proto != ipv6-icmp {coin}counter drop comment "loss {ifname}"
    }}
}}
"""


def add_loss(node: LabNode, ifname: str, probability: float) -> LossRule:
    """Drop packets arriving at `node` on `ifname` with `probability`."""
    apply_ruleset(node, loss_ruleset(ifname, probability), label="loss")
    return LossRule(node, ifname, probability)


def link_loss(a: LabNode, a_ifname: str, b: LabNode, b_ifname: str, probability: float) -> list[LossRule]:
    """Loss in both directions of the link a/a_ifname <-> b/b_ifname."""
    return [add_loss(a, a_ifname, probability), add_loss(b, b_ifname, probability)]


def netem_available(node: LabNode, ifname: str) -> bool:
    """Whether this kernel can attach a netem qdisc (probed on `ifname` of `node`, then removed)."""
    with IPRoute(netns=node.namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        try:
            ipr.tc("add", "netem", index=index, handle="1:", delay=1000)
        except NetlinkError:
            return False
        ipr.tc("del", index=index, handle="1:")
        return True


def add_delay(node: LabNode, ifname: str, delay_ms: float, *, reorder: float = 0.0) -> None:
    """Delay (and optionally reorder) packets leaving `node` on `ifname` with netem, if the kernel has it."""
    if not netem_available(node, ifname):
        raise ImpairmentUnavailableError(
            f"cannot delay or reorder on {node.name}/{ifname} (asked: delay {delay_ms!r} ms, reorder "
            f"{reorder!r}): netem is not available in this kernel (sch_netem not built); "
            "only packet loss (nftables) can be emulated here"
        )
    with IPRoute(netns=node.namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.tc("add", "netem", index=index, handle="1:", delay=int(delay_ms * 1000), reorder=reorder)
