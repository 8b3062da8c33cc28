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
