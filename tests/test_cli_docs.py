"""docs/cli.md shows the help every command prints today, and has a section for each."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cli_docs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cli_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_has_a_section_with_its_current_help():
    cli_docs = load_script()
    page = cli_docs.PAGE.read_text(encoding="utf-8")
    assert cli_docs.missing_sections(page) == []
    assert cli_docs.refreshed(page) == page, "docs/cli.md is stale: python scripts/cli_docs.py"


def test_a_stale_block_is_noticed():
    cli_docs = load_script()
    page = cli_docs.PAGE.read_text(encoding="utf-8")
    stale = page.replace("show this help message and exit", "an old help text", 1)
    assert cli_docs.refreshed(stale) != stale
