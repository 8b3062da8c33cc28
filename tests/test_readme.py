"""The README points only inside the repository: every file, directory and section it names exists here
(a user's clone has nothing beside it)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
TOP_DIRECTORIES = ("fixtures", "tests", "netlab", "forwarder")


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the Markdown headings: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}


def test_the_readme_points_at_nothing_outside_the_repository() -> None:
    assert "../" not in README


def test_every_link_of_the_readme_resolves_here() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    assert targets
    for target in targets:
        if target.startswith("#"):
            assert target[1:] in anchors(README), f"no section {target}"
        elif not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"the README links to {target}, which is not in the repository"


def test_every_path_the_readme_names_exists() -> None:
    pattern = rf"`(?:[^`]* )?((?:{'|'.join(TOP_DIRECTORIES)})/[^`\s]*)`"
    paths = set(re.findall(pattern, README))
    assert "netlab/service/replypath.py" in paths
    for path in sorted(paths):
        if re.search(r"[A-Z]{3,}", path):  # a template such as fixtures/scenarios/bug-NNN.toml
            continue
        assert list(ROOT.glob(path)), f"the README names {path}, which is not in the repository"


def _shipped_list() -> str:
    """The README's list of shipped scenarios: from 'Shipped' in the Scenarios section to the next heading."""
    section = README[README.index("### Scenarios") :]
    start = section.index("\nShipped")
    return section[start : section.index("\n#", start)]


def test_the_readme_lists_every_shipped_scenario_and_no_other() -> None:
    from netlab.fixtures import scenario_names

    listed = set(re.findall(r"`([a-z0-9-]+)`", _shipped_list()))
    shipped = set(scenario_names())
    assert sorted(shipped - listed) == [], "shipped scenarios the README does not list"
    assert sorted(listed - shipped) == [], "the README lists scenarios that do not ship"


DIAGRAM_TYPES = ("flowchart", "graph", "sequenceDiagram")
FLOW_DIRECTIONS = ("LR", "RL", "TB", "TD", "BT")
SEQUENCE_BLOCKS = ("alt", "opt", "loop", "par", "rect", "critical", "break")
_PAIRS = {")": "(", "]": "[", "}": "{"}


def mermaid_blocks(text: str) -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```$", text, re.M | re.S)


def mermaid_problems(block: str) -> list[str]:
    """What keeps a Mermaid block from rendering, as far as its structure shows: the diagram type, brackets
    and quotes balanced per line, a flowchart's edges between boxes, a sequence's participants declared
    and its blocks closed."""
    lines = [
        line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("%%")
    ]
    if not lines:
        return ["empty block"]
    kind, *rest = lines[0].split()
    if kind not in DIAGRAM_TYPES:
        return [f"unknown diagram type {kind!r}"]
    problems = []
    for line in lines[1:]:
        if line.count('"') % 2:
            problems.append(f"unbalanced quotes: {line}")
            continue
        stack: list[str] = []
        for char in re.sub(r'"[^"]*"', "", line):
            if char in "([{":
                stack.append(char)
            elif char in _PAIRS and (not stack or stack.pop() != _PAIRS[char]):
                stack.append("!")
                break
        if stack:
            problems.append(f"unbalanced brackets: {line}")
    if kind in ("flowchart", "graph"):
        if rest[:1] and rest[0] not in FLOW_DIRECTIONS:
            problems.append(f"unknown direction {rest[0]!r}")
        for line in lines[1:]:
            unquoted = re.sub(r'"[^"]*"', '""', line)
            if re.search(r"--|-\.|==", unquoted) and not re.search(r"(-->|---|\.->|==>)", unquoted):
                problems.append(f"an edge without an arrow: {line}")
    else:
        declared = set(re.findall(r"^(?:participant|actor) (\S+)", "\n".join(lines), re.M))
        depth = 0
        for line in lines[1:]:
            word = line.split()[0]
            if word in SEQUENCE_BLOCKS:
                depth += 1
            elif word == "end":
                depth -= 1
                if depth < 0:
                    problems.append("an `end` without a block")
            elif word == "else" and depth == 0:
                problems.append("an `else` outside alt")
            message = re.match(r"^([\w-]+)\s*-[->x)]+\+?-?\s*([\w-]+)\s*:", line)
            if message:
                problems += [f"undeclared participant {n!r}" for n in message.groups() if n not in declared]
            elif not re.match(
                r"^(participant|actor|Note|note|autonumber|" + "|".join(SEQUENCE_BLOCKS) + ")", line
            ) and (word not in ("end", "else")):
                problems.append(f"not a message: {line}")
        if depth > 0:
            problems.append("a block without its `end`")
    return problems


def test_the_readme_draws_both_reply_paths_and_the_load_balancer_deployment_in_mermaid() -> None:
    blocks = mermaid_blocks(README)
    assert any(block.startswith("sequenceDiagram") and "--reply relay" in block for block in blocks)
    assert any(block.startswith("flowchart") and "load balancer" in block for block in blocks)
    for block in blocks:
        assert mermaid_problems(block) == [], block


def test_the_mermaid_check_catches_broken_diagrams() -> None:
    assert mermaid_problems("pie\n  a : 1") == ["unknown diagram type 'pie'"]
    assert mermaid_problems('flowchart LR\n  A["a] --> B') == ['unbalanced quotes: A["a] --> B']
    assert mermaid_problems("flowchart LR\n  A[a --> B") == ["unbalanced brackets: A[a --> B"]
    sequence = "sequenceDiagram\n participant A\n participant B\n alt x\n A->>B: hi\n"
    assert mermaid_problems(sequence) == ["a block without its `end`"]
    assert mermaid_problems(sequence + " end\n A->>C: who") == ["undeclared participant 'C'"]
