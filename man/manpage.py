"""Writes the manual page systemd-transparent-udp-forwarderd(8): its OPTIONS section generated from the
forwarder's argument parser, everything else from the hand-written systemd-transparent-udp-forwarderd.8.in
beside this file. Run at build time (debian/rules) or by hand; standard library only.

Our own generator rather than argparse-manpage: the Debian package's build dependencies must come from
Debian 12, whose argparse-manpage (1.2.2) writes every page as section 1 and cannot add hand-written
sections. A page generated from the parser at build time cannot miss an option the daemon has.
"""

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "systemd-transparent-udp-forwarderd.8.in"
# This checkout's forwarder is the one documented, never an installed copy: its root goes first on the path.
sys.path.insert(0, str(HERE.parent))

from forwarder import __version__  # noqa: E402
from forwarder.service.options import build_parser  # noqa: E402

# An option word in help text (--reply, -h), set in bold with roff's minus signs so it can be copied.
OPTION_WORD = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")


def escape(text: str) -> str:
    """`text` as roff prose: backslashes escaped, option words bold, no line read as a request."""
    text = text.replace("\\", "\\e")
    parts = OPTION_WORD.split(text)
    for index in range(1, len(parts), 2):
        parts[index] = "\\fB" + parts[index].replace("-", "\\-") + "\\fR"
    lines = "".join(parts).splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def invocation(action: argparse.Action) -> str:
    """How an option is written: `--listen ADDR:PORT`, `--receive batch|single`, `--gso`."""
    names = ", ".join("\\fB" + name.replace("-", "\\-") + "\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices is not None:
        value = "|".join("\\fB" + str(choice) + "\\fR" for choice in action.choices)
    else:
        value = "\\fI" + str(action.metavar or action.dest.upper()).replace("-", "\\-") + "\\fR"
    return f"{names} {value}"


def options_section(parser: argparse.ArgumentParser) -> str:
    """One tagged paragraph per option, in the order of --help."""
    formatter = argparse.HelpFormatter(parser.prog)
    paragraphs = []
    for action in parser._actions:
        if not action.option_strings:
            continue  # DEST: the SYNOPSIS and DESTINATIONS sections describe it
        help_text = formatter._expand_help(action) if action.help else ""
        paragraphs.append(f".TP\n{invocation(action)}\n{escape(help_text)}")
    return "\n".join(paragraphs)


def render(template: str, parser: argparse.ArgumentParser, version: str) -> str:
    """The page: the template with its @VERSION@ and its @OPTIONS@ line filled in."""
    if template.count("\n@OPTIONS@\n") != 1:
        raise ValueError("the template must have exactly one line @OPTIONS@")
    page = template.replace("\n@OPTIONS@\n", "\n" + options_section(parser) + "\n")
    return page.replace("@VERSION@", version)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page to --output, or to stdout."""
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--output", type=Path, help="the file to write (default: stdout)")
    args = arguments.parse_args(argv)
    page = render(TEMPLATE.read_text(), build_parser(), __version__)
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
