"""Refresh the `--help` blocks of docs/cli.md from the `ltau` parser itself.

Every "## `ltau NAME`" section's first ```text block is replaced by that command's help, at a
fixed width of 100 columns. ``python scripts/cli_docs.py`` rewrites the page;
``tests/test_cli_docs.py`` fails when the page is out of date.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from unittest import mock

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
SECTION = re.compile(r"^## `(ltau(?: [a-z-]+)?)`\n(.*?)```text\n.*?```\n", re.S | re.M)


def help_texts() -> dict[str, str]:
    """``{"ltau": ..., "ltau fit": ..., ...}``: the help of every command at 100 columns."""
    from ltau.cli import build_parser

    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        parser = build_parser()
        texts = {"ltau": parser.format_help()}
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, subparser in commands.choices.items():
            texts[f"ltau {name}"] = subparser.format_help()
    return texts


def refreshed(page: str) -> str:
    """``page`` with every command section's help block replaced by the current help."""
    texts = help_texts()

    def replace(found: re.Match) -> str:
        name, prose = found.group(1), found.group(2)
        if name not in texts:
            raise SystemExit(f"docs/cli.md documents {name!r}, which the parser does not have")
        return f"## `{name}`\n{prose}```text\n{texts[name].rstrip()}\n```\n"

    return SECTION.sub(replace, page)


def missing_sections(page: str) -> list[str]:
    """Commands of the parser that the page has no section for."""
    documented = {found.group(1) for found in SECTION.finditer(page)}
    return sorted(set(help_texts()) - documented)


if __name__ == "__main__":
    text = PAGE.read_text(encoding="utf-8")
    missing = missing_sections(text)
    if missing:
        sys.exit(f"docs/cli.md has no section for {missing}: write one first")
    PAGE.write_text(refreshed(text), encoding="utf-8")
