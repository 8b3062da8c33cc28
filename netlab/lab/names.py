"""Names of lab resources: the `nl-` prefix plus a random suffix, so parallel runs never collide."""

import secrets

PREFIX = "nl-"
IFNAMSIZ = 15  # longest Linux interface name


def new_lab_id() -> str:
    """A short random lab id (6 hex digits): 16M values, ample for parallel test workers."""
    return secrets.token_hex(3)


def namespace_name(lab_id: str, node: str) -> str:
    """The network namespace of `node` in lab `lab_id`."""
    return f"{PREFIX}{lab_id}-{node}"
