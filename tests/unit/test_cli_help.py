"""``--help`` of both programs, and of every subcommand, is plain text for a terminal.

The module docstrings are written for readers of the code (``double backticks``,
``:func:`...```); none of that markup may reach an operator's screen.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest

from gateway import cli as gateway_cli
from tests.harness import ROOT
from workers import cli as workers_cli

# Sphinx/RST markup: inline literals, roles, directives, and a stray backtick.
MARKUP = re.compile(r"``|:[a-z]+:`|^\s*\.\. \w+::|`", re.M)
# A subcommand's line in argparse's "positional arguments" section: four spaces, its name.
SUBCOMMAND = re.compile(r"^ {4}([a-z][a-z-]*)(?: |$)", re.M)

Main = Callable[[Sequence[str]], object]


def help_of(main: Main, args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``main(args + ["--help"])`` prints; argparse exits 0 after printing it."""
    with pytest.raises(SystemExit) as done:
        main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def every_help(main: Main, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """The help of the program and of each subcommand, found from the help itself."""
    pages: dict[str, str] = {}
    todo: list[tuple[str, ...]] = [()]
    while todo:
        args = todo.pop()
        page = pages[" ".join(args)] = help_of(main, args, capsys)
        positional = page.partition("positional arguments:")[2].partition("\n\n")[0]
        todo += [(*args, name) for name in SUBCOMMAND.findall(positional)]
    return pages


@pytest.mark.parametrize(
    ("main", "commands"),
    [
        (gateway_cli.main, {"serve", "check-config", "distribution", "drain", "sync-db"}),
        (workers_cli.main, {"run", "enqueue", "stats", "check-config", "failed", "failed list"}),
    ],
    ids=["gateway", "workers"],
)
def test_every_help_page_is_plain_text(
    main: Main, commands: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    pages = every_help(main, capsys)
    assert commands <= set(pages), sorted(pages)  # the walk found the subcommands
    marked = {name or "(top)": MARKUP.findall(page) for name, page in pages.items()}
    assert {name: found for name, found in marked.items() if found} == {}


def test_python_m_workers_help_says_what_it_does() -> None:
    """As an operator runs it: a real process."""
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m workers")
    assert "run the pool, enqueue a job" in result.stdout
    assert not MARKUP.search(result.stdout)
