"""The manual page systemd-transparent-udp-forwarderd(8) (man/manpage.py: OPTIONS from the argument parser,
the rest hand-written), the README's option table and the units' Documentation=: every option of `--help`
is in the page and in the table, the page renders without a warning and names every drop reason and exit
code, and every unit points to it."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forwarder import __version__, errors
from forwarder.core.counters import DropReason
from forwarder.core.proxy_protocol import HeaderProblem
from forwarder.io.loop import OTHER_SIGNALS, STOP_SIGNALS

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "man" / "manpage.py"
README = ROOT / "README.md"
UNITS = ROOT / "fixtures" / "systemd"
PAGE_NAME = "systemd-transparent-udp-forwarderd(8)"
SECTIONS = [
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "OPTIONS",
    "DESTINATIONS",
    "PORT RANGES",
    "MODES",
    "DROP REASONS",
    "UNITS",
    "FILES",
    "SIGNALS",
    "ENVIRONMENT",
    "EXIT STATUS",
    "EXAMPLES",
    "SEE ALSO",
]
# An option word: --listen, -h (not the hyphen inside dual-stack).
OPTION = re.compile(r"(?<![\w-])--?[a-z][a-z0-9-]*")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page as the Debian build generates it."""
    path = tmp_path_factory.mktemp("man") / "systemd-transparent-udp-forwarderd.8"
    subprocess.run([sys.executable, str(GENERATOR), "--output", str(path)], check=True, timeout=60)
    return path


def render(page: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`man -l` on the page, as plain text (wide, so no option is hyphenated across lines)."""
    man = shutil.which("man")
    assert man is not None, "man not found: install the Debian package 'man-db' (./dev test does)"
    return subprocess.run(
        [man, *options, "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "MANWIDTH": "200", "MANROFFSEQ": ""},
        check=False,
    )


def section_of(text: str, heading: str) -> str:
    """The body of one section of a rendered page (headings start a line, in capitals)."""
    found = re.search(rf"^{heading}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.M | re.S)
    assert found, f"the page has no section {heading}"
    return found[1]


def options_of_help() -> list[str]:
    """Every option `--help` lists (its lines that start with an option, two spaces in)."""
    result = subprocess.run(
        [sys.executable, "-m", "forwarder", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    options = []
    for line in result.stdout.splitlines():
        if line.startswith("  -"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            options += [word for word in OPTION.findall(invocation) if word not in options]
    assert "--listen" in options, result.stdout
    return options


def readme_option_table() -> str:
    """The README's table of the forwarder's options (the one headed `| option | default | meaning |`)."""
    found = re.search(r"^\| option \| default \| meaning \|\n((?:\|.*\n)+)", README.read_text(), re.M)
    assert found, "the README has no table headed | option | default | meaning |"
    return found[1]


def test_every_option_of_help_is_in_the_man_page_and_in_the_readmes_option_table(page: Path) -> None:
    options = options_of_help()
    rendered = section_of(render(page).stdout, "OPTIONS")
    in_page = set(OPTION.findall(rendered))
    in_table = {
        word for row in readme_option_table().splitlines() for word in OPTION.findall(row.split("|")[1])
    }

    missing = {
        "the man page's OPTIONS": [option for option in options if option not in in_page],
        "the README's option table": [option for option in options if option not in in_table],
    }

    assert missing == {"the man page's OPTIONS": [], "the README's option table": []}


def test_the_readmes_option_table_lists_no_option_the_forwarder_lacks() -> None:
    options = set(options_of_help())
    in_table = {
        word for row in readme_option_table().splitlines() for word in OPTION.findall(row.split("|")[1])
    }

    assert sorted(in_table - options) == []


def test_the_man_page_renders_without_a_warning(page: Path) -> None:
    # What lintian runs on a packaged page.
    result = render(page, "--warnings", "-E", "UTF-8", "-Tutf8", "-Z")

    assert (result.returncode, result.stderr) == (0, "")


def test_the_man_page_is_section_8_with_the_forwarders_version_and_the_hand_written_sections(
    page: Path,
) -> None:
    text = render(page).stdout
    headings = re.findall(r"^([A-Z][A-Z ]+)$", text, re.M)

    assert text.startswith("SYSTEMD-TRANSPARENT-UDP-FORWARDERD(8)")
    assert f"transparent-udp-forwarder {__version__}" in text
    assert headings == SECTIONS


def test_the_man_page_names_every_drop_reason_and_exit_code(page: Path) -> None:
    text = render(page).stdout
    reasons = [reason.value for reason in DropReason] + [problem.value for problem in HeaderProblem]
    codes = [
        str(error.exit_code)
        for error in vars(errors).values()
        if isinstance(error, type)
        and issubclass(error, errors.ForwarderError)
        and error is not errors.ForwarderError
    ]

    assert [reason for reason in reasons if reason not in section_of(text, "DROP REASONS")] == []
    exit_status = section_of(text, "EXIT STATUS")
    assert sorted(code for code in codes if not re.search(rf"^\s+{code}\s", exit_status, re.M)) == []
    assert len(codes) >= 5


def test_the_man_page_says_what_every_signal_the_forwarder_handles_does(page: Path) -> None:
    signals = section_of(render(page).stdout, "SIGNALS")

    assert [sig.name for sig in (*STOP_SIGNALS, *OTHER_SIGNALS) if sig.name not in signals] == []


def test_the_generator_refuses_a_template_without_its_options_line() -> None:
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        import manpage
    finally:
        sys.path.remove(str(GENERATOR.parent))
    from forwarder.service.options import build_parser

    with pytest.raises(ValueError, match="@OPTIONS@"):
        manpage.render(".TH X 8\n.SH OPTIONS\n", build_parser(), __version__)


def test_option_words_in_help_text_become_bold_roff_minus_signs() -> None:
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        import manpage
    finally:
        sys.path.remove(str(GENERATOR.parent))

    assert manpage.escape(".starts with a dot; dual-stack; see --reply") == (
        "\\&.starts with a dot; dual-stack; see \\fB\\-\\-reply\\fR"
    )


@pytest.mark.parametrize("unit", sorted(path.name for path in UNITS.iterdir()))
def test_every_unit_documents_itself_with_the_man_page_first(unit: str) -> None:
    documentation = re.findall(r"^Documentation=(.*)$", (UNITS / unit).read_text(), re.M)

    assert documentation, f"{unit} has no Documentation="
    assert documentation[0].split()[0] == f"man:{PAGE_NAME}"
