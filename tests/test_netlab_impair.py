"""Impairment: random loss on a link with nftables, accounted exactly by the rule's counter; delay and
reordering refused with a clear error where the kernel has no netem."""

import pytest

from netlab import Lab
from netlab.errors import ImpairmentUnavailableError, NetlabError
from netlab.topology.shipped import seed_deployment
from netlab.traffic.expect import expect
from netlab.traffic.impair import add_delay, link_loss, loss_ruleset, netem_available

pytestmark = pytest.mark.privileged


def test_loss_drops_a_share_of_the_datagrams_and_counts_each_drop(lab: Lab) -> None:
    lab.build(seed_deployment())
    inbox = expect(lab["host"], port=27000)
    client_side, host_side = link_loss(lab["client"], "to-host", lab["host"], "to-client", 0.5)

    sent = lab["client"].send_fast(dst="198.51.100.1", dport=27000, payloads=[b"maybe"], count=400)

    dropped = host_side.dropped()
    assert 0 < dropped < sent  # 400 coin flips: all heads or all tails has probability 2**-399
    inbox.datagrams(count=sent - dropped, payload=b"maybe").arrive(within=5).and_nothing_else()
    assert client_side.dropped() == 0  # nothing came back the other way


def test_full_loss_drops_everything(lab: Lab) -> None:
    lab.build(seed_deployment())
    inbox = expect(lab["host"], port=27000)
    link_loss(lab["client"], "to-host", lab["host"], "to-client", 1.0)
    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=1, dport=27000, payload=b"gone")
    inbox.nothing(quiet=0.3)


def test_a_loss_probability_outside_0_to_1_is_refused() -> None:
    with pytest.raises(NetlabError, match=r"loss probability 1\.5 must be from 0 to 1"):
        loss_ruleset("to-host", 1.5)


def test_asking_for_delay_says_netem_is_not_available_in_this_kernel(lab: Lab) -> None:
    lab.build(seed_deployment())
    if netem_available(lab["host"], "to-client"):
        pytest.skip("this kernel has sch_netem: delay is supported here")
    with pytest.raises(ImpairmentUnavailableError) as caught:
        add_delay(lab["host"], "to-client", 20, reorder=0.25)
    message = str(caught.value)
    assert "cannot delay or reorder on host/to-client (asked: delay 20 ms, reorder 0.25)" in message
    assert "netem is not available in this kernel" in message
