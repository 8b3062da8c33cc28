"""Netlink calls that tolerate what is already done: the lab's policy rules and routes are added and removed
by several records (relay routing, tproxy steering), each of which may run its removal twice or find the
node gone; one home for that tolerance."""

import functools
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netlab.errors import SystemCallError
from netlab.lab import netns

EEXIST, ESRCH, ENOENT = 17, 3, 2


def tolerate(call: Callable[[], object], *codes: int) -> bool:
    """Run a netlink call; False if it failed with one of `codes` (already there / already gone)."""
    try:
        call()
    except NetlinkError as error:
        if error.code in codes:
            return False
        raise SystemCallError(error.code, f"netlink: {error}") from None
    return True


def remove_rules_and_routes(
    namespace: str, rules: list[dict[str, Any]], routes: list[dict[str, Any]]
) -> None:
    """Delete `rules` then `routes` (pyroute2 keywords) from `namespace` and empty both lists; what is already
    gone, the namespace included, is no error (IPRoute(netns=) would make a missing namespace again)."""
    if netns.exists(namespace):
        with IPRoute(netns=namespace) as ipr:
            for rule in rules:
                tolerate(functools.partial(ipr.rule, "del", **rule), ENOENT, ESRCH)
            for route in routes:
                tolerate(functools.partial(ipr.route, "del", **route), ESRCH, ENOENT)
    rules.clear()
    routes.clear()
