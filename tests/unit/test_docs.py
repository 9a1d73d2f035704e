"""The README and the documentation site show only what exists: commands the CLI has, files
the repository holds, pages the site lists; the README stays short enough to start from."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])

# The subcommands the README and the docs may show. Each must be in `gpufleet --help`; a page
# that shows one not listed here fails below, so adding a command to the docs means adding it
# here, and removing one from the CLI fails until the docs stop showing it.
DOCUMENTED_COMMANDS = {
    "bundle",
    "plot",
    "init",
    "discover",
    "measure",
    "validate",
    "plan",
    "preview",
    "drift",
    "engines",
    "routes",
    "firewall",
    "bench",
    "verify",
    "status",
    "rebuild",
    "vault",
    "reference",
    "lab",
}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A code span opens and closes with the same run of backticks (``a `b` c`` is one span).
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
# `gpufleet WORD [WORD]` where a shell would run it: at the start of a line (after a `$ `
# prompt), after `&&`, `;` or `|`, or as a path ending in bin/gpufleet.
COMMAND = re.compile(
    r"(?:^|&&|;|\||\$ |bin/)[ \t]*gpufleet[ \t]+([a-z][a-z0-9-]*)"
    # and its action (`lab up`), a bare word: not a file (`inventory.py`) or a path.
    r"(?:[ \t]+([a-z][a-z0-9-]*)\b(?![./]))?",
    re.MULTILINE,
)
REPO_FILE = re.compile(
    r"(?<![\w./~-])((?:deploys|inventory|tests|bench|scripts)/[\w./-]+\.(?:py|sh))"
)


def _code(page: Path) -> list[str]:
    """The fenced blocks and the inline code of a page: where commands are shown to be run."""
    text = page.read_text()
    blocks = FENCE.findall(text)
    spans = [span.strip() for _, span in INLINE_CODE.findall(FENCE.sub("", text))]
    return blocks + spans


def _shown_commands() -> set[tuple[str, str, str | None]]:
    shown = set()
    for page in PAGES:
        for code in _code(page):
            for command, action in COMMAND.findall(code):
                shown.add((str(page.relative_to(ROOT)), command, action or None))
    return shown


@cache
def _help(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", *argv, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"gpufleet {' '.join(argv)} --help: {result.stderr}"
    return result.stdout


@cache
def _help_words(*argv: str) -> frozenset[str]:
    """Subcommand and action names in the CLI's help, whether it lists them as choices
    (argparse's `{a,b}`, click's `{a|b}` or `[a|b]`) or as click's Commands section."""
    text = _help(*argv)
    words = set()
    for choices in re.findall(r"[{\[]([a-z0-9-]+(?:[,|][a-z0-9-]+)+)[}\]]", text):
        words.update(re.split(r"[,|]", choices))
    commands = re.search(r"^Commands:\n((?:[ \t]+\S.*\n?)+)", text, re.MULTILINE)
    if commands:
        words.update(re.findall(r"^[ \t]+([a-z][a-z0-9-]*)", commands.group(1), re.MULTILINE))
    return frozenset(words)


def test_readme_is_short_enough_to_start_from():
    assert len((ROOT / "README.md").read_bytes()) < 12 * 1024


def test_readme_keeps_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", readme, re.MULTILINE), command
        assert re.search(rf"^step {command}$", ci, re.MULTILINE), command


def test_docs_show_only_commands_the_cli_has():
    shown = _shown_commands()
    assert {command for _, command, _ in shown} >= {"validate", "plan", "verify", "lab"}
    missing = sorted(
        f"{page}: gpufleet {command}"
        for page, command, _ in shown
        if command not in DOCUMENTED_COMMANDS or command not in _help_words()
    )
    assert not missing, "shown in the docs, absent from gpufleet --help or the list here"


def test_every_documented_command_is_in_the_cli():
    assert _help_words() >= DOCUMENTED_COMMANDS, DOCUMENTED_COMMANDS - _help_words()


def test_docs_show_only_actions_the_cli_has():
    shown = {(page, command, action) for page, command, action in _shown_commands() if action}
    assert ("docs/lab.md", "lab", "up") in shown
    wrong = sorted(
        f"{page}: gpufleet {command} {action}"
        for page, command, action in shown
        # Only commands whose help lists actions; others take an argument there.
        if len(_help_words(command)) > 0 and action not in _help_words(command)
    )
    assert not wrong


def test_docs_show_only_top_level_options_the_cli_has():
    shown = {
        (str(page.relative_to(ROOT)), option)
        for page in PAGES
        for code in _code(page)
        for option in re.findall(r"(?:^|bin/)[ \t]*gpufleet[ \t]+(--[a-z][a-z-]*)", code, re.M)
    }
    assert ("README.md", "--version") in shown
    absent = sorted(f"{page}: gpufleet {option}" for page, option in shown if option not in _help())
    assert not absent


def test_repository_files_the_docs_name_exist():
    named = {
        (str(page.relative_to(ROOT)), path)
        for page in PAGES
        for code in _code(page)
        for path in REPO_FILE.findall(code)
    }
    assert ("README.md", "deploys/gpu_node.py") in named
    absent = sorted(f"{page}: {path}" for page, path in named if not (ROOT / path).exists())
    assert not absent


def test_every_deploy_has_its_page():
    deploys = {p.stem for p in (ROOT / "deploys").glob("*.py")}
    pages = {p.stem for p in (DOCS / "deploys").glob("*.md")}
    assert deploys == pages


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/index.md" in links
    assert not [link for link in links if not (ROOT / link).exists()]


def _nav_files(entries) -> list[str]:
    files = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files += _nav_files(value) if isinstance(value, list) else [value]
    return files


def test_the_site_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = _nav_files(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert len(listed) == len(set(listed))


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "deploys/gpu_node/index.html").exists()


def test_every_group_gpufleet_knows_is_explained():
    from gpufleet.models import HOST_GROUPS

    page = (ROOT / "docs/fleet.md").read_text()
    table = page.split("## The groups", 1)[1].split("\n## ", 1)[0]
    explained = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    assert explained == set(HOST_GROUPS)
