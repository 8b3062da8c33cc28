"""forwarder.io.capabilities: the sets read from /proc/PID/status and capget(2), and the drop of every
capability, done in a child process (a capability dropped by the test process would be lost for good)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forwarder.io.capabilities import (
    CAP_NET_ADMIN,
    CAP_NET_RAW,
    CapabilitySets,
    capget,
    names,
    of_process,
    parse_status,
)

ROOT = Path(__file__).resolve().parent.parent

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Uid:\t65534\t65534\t65534\t65534
CapInh:\t0000000000002000
CapPrm:\t0000000000003000
CapEff:\t0000000000001000
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000002000
NoNewPrivs:\t1
"""


def test_parse_status_reads_all_five_sets_as_bit_masks() -> None:
    assert parse_status(STATUS) == CapabilitySets(
        effective=1 << CAP_NET_ADMIN,
        permitted=1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW,
        inheritable=1 << CAP_NET_RAW,
        ambient=1 << CAP_NET_RAW,
        bounding=(1 << 41) - 1,
    )


def test_parse_status_of_a_process_without_capabilities_holds_none() -> None:
    emptied = re.sub(r"^(Cap(?:Inh|Prm|Eff|Amb)):\t[0-9a-f]+$", r"\1:\t" + "0" * 16, STATUS, flags=re.M)

    sets = parse_status(emptied)

    assert sets.held == 0
    assert sets.bounding == (1 << 41) - 1


def test_parse_status_names_the_missing_set() -> None:
    text = "".join(line for line in STATUS.splitlines(keepends=True) if not line.startswith("CapAmb"))

    with pytest.raises(ValueError, match=r"no CapAmb line"):
        parse_status(text)


def test_parse_status_names_a_mask_that_is_not_hexadecimal() -> None:
    with pytest.raises(ValueError, match=r"CapEff: 'zz' is not a hexadecimal capability mask"):
        parse_status(STATUS.replace("CapEff:\t0000000000001000", "CapEff:\tzz"))


def test_names_lists_the_capabilities_of_a_mask_lowest_first() -> None:
    assert names(1 << CAP_NET_RAW | 1 << CAP_NET_ADMIN) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert names(0) == []
    assert names(1 << 63) == ["CAP_63"]


def test_capget_agrees_with_proc_self_status() -> None:
    from_proc = of_process()
    from_capget = capget()

    assert (from_capget.effective, from_capget.permitted, from_capget.inheritable) == (
        from_proc.effective,
        from_proc.permitted,
        from_proc.inheritable,
    )


# The child prints the sets before and after drop_all() and what drop_all() returned, as JSON.
CHILD = """
import json
from forwarder.io.capabilities import drop_all, of_process
before = of_process()
dropped = drop_all()
after = of_process()
again = drop_all()
print(json.dumps({"before": before.held, "ambient_before": before.ambient, "dropped": dropped,
                  "after": [after.effective, after.permitted, after.inheritable, after.ambient],
                  "bounding_kept": after.bounding == before.bounding, "again": again}))
"""


def run_child(prefix: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
    )
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.mark.privileged
def test_drop_all_empties_every_set_of_a_process_holding_capabilities() -> None:
    answer = run_child([])

    assert answer["before"] != 0
    assert answer["dropped"] == answer["before"]
    assert answer["after"] == [0, 0, 0, 0]
    assert answer["bounding_kept"] is True
    assert answer["again"] == 0  # nothing left: no second capset


@pytest.mark.privileged
def test_drop_all_clears_an_ambient_capability_as_the_units_grant_it() -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv not found: install the Debian package 'util-linux'"

    answer = run_child([setpriv, "--inh-caps=+net_raw", "--ambient-caps=+net_raw", "--"])

    assert answer["ambient_before"] == 1 << CAP_NET_RAW
    assert answer["after"] == [0, 0, 0, 0]
