"""The README's reply-path recipe, loaded verbatim from README.md into the host of a lab, carries a reply
larger than the MTU back to the client from the host's address (its second and later fragments too).

client 198.51.100.10 --- 198.51.100.1 [host: forwarder + the README's rules] 192.0.2.1 --- 192.0.2.2 backend
"""

import re
from pathlib import Path

import pytest
from e2e_helpers import start_echo

from netlab import Lab, start_forwarder
from netlab.lab.nft import apply_ruleset
from netlab.topology.shipped import seed_deployment

README = Path(__file__).resolve().parent.parent / "README.md"
LARGE = 3000  # the echo's reply (b"echo:" + this) spans three 1500-byte fragments


def readme_recipe() -> str:
    """The first code block of the README's section on direct replies that defines an nftables table."""
    section = README.read_text().split("#### Direct: the host rewrites the replies' source", 1)[1]
    section = section.split("\n#### ", 1)[0]
    blocks = re.findall(r"^```\n(.*?)^```$", section, re.S | re.M)
    [recipe] = [str(block) for block in blocks if block.startswith("table inet ")]
    return recipe


def test_the_readme_recipe_is_the_avorion_example_of_the_host_and_backend_of_the_seed_lab() -> None:
    recipe = readme_recipe()
    assert "192.0.2.2" in recipe
    assert "198.51.100.1" in recipe
    assert "udp sport" not in recipe  # it would miss the later fragments of a large reply


@pytest.mark.privileged
def test_the_readme_recipe_brings_a_reply_larger_than_the_mtu_back_from_the_host(lab: Lab) -> None:
    lab.build(seed_deployment())
    start_echo(lab, "192.0.2.2", 27000)
    apply_ruleset(lab["host"], readme_recipe(), label="readme-recipe")
    start_forwarder(lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"])
    client = lab["client"].udp_socket("198.51.100.10", 0)
    client.connect(("198.51.100.1", 27000))  # accepts a reply only from the address it sent to
    client.settimeout(10)
    payload = bytes(index % 251 for index in range(LARGE))

    client.send(payload)
    assert client.recv(65535) == b"echo:" + payload
