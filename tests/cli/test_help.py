"""Every --help reads as plain text, documents every option, and fits 80 columns; usage errors hint."""

from __future__ import annotations

import argparse
import re

import pytest

import connecteur
from connecteur.bench.orchestrator import available_targets
from connecteur.cli import SUBCOMMANDS, build_parser, main
from tests.cli.test_cli import assert_one_line_error, run


def help_of(command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help_is_plain_text_within_80_columns(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = help_of([command] if command else [], capsys, monkeypatch)
    assert "``" not in text  # reStructuredText from a docstring
    assert all(len(line) <= 80 for line in text.splitlines()), text  # a word too long to wrap sticks out
    description = text.split("\n\n")[1]
    assert not description.startswith(("options:", "positional arguments:")), f"{command or 'connecteur'} has none"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_option_has_help_and_positionals_are_upper_case(command: str) -> None:
    parser = subparsers()[command]
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if not action.option_strings:
            assert action.metavar and str(action.metavar).isupper(), f"{command} {action.dest}"


def test_the_server_limits_show_their_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = " ".join(help_of(["serve"], capsys, monkeypatch).split())
    for option, default in [
        ("--max-connections N", "10000"),
        ("--idle-timeout S", "300.0"),
        ("--message-timeout S", "60.0"),
        ("--handshake-timeout S", "10.0"),
    ]:
        assert re.search(rf"{option} [^-]*\(default: {re.escape(default)}\)", text), option


def test_a_list_default_wraps_between_names(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = help_of(["bench"], capsys, monkeypatch)
    names = re.findall(r"[\w@*-]+", text.split("\n  --targets LIST", 1)[1].split("\n  --workload", 1)[0])
    assert set(available_targets()) <= set(names)  # every name whole: select*2, asyncio-streams...


def test_a_misspelt_option_is_the_subcommands_error_with_a_hint() -> None:
    result = run("serve", ":9000", "--enigne", "select")
    assert_one_line_error(result, 2)
    assert result.stderr == "connecteur: serve: unrecognized arguments: --enigne select (did you mean --engine?)\n"


def test_a_misspelt_top_level_option_is_not_a_missing_command() -> None:
    result = run("--versoin")
    assert_one_line_error(result, 2)
    assert result.stderr == "connecteur: unrecognized arguments: --versoin (did you mean --version?)\n"
    assert_one_line_error(run("--frobnicate", "serve"), 2, "unrecognized arguments: --frobnicate")


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = run(flag)
    assert (result.returncode, result.stderr) == (0, "")
    build = "compiled with mypyc" if connecteur.COMPILED else "pure Python"
    build += ", C split" if connecteur.framing.length.SPEEDUPS else ""
    assert re.fullmatch(rf"connecteur \S+ \({build}\)\n", result.stdout)
