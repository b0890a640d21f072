"""`kioskfleet --help` is for users: every command grouped, every option explained with its
default, `server --help` listing the settings from the settings model."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
import typer.core
import typer.main

from kioskfleet import cli
from kioskfleet.cli_updates import app as updates_app
from server.config import Settings, settings_table

_NO_HELP_NEEDED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _parsers(
    parser: argparse.ArgumentParser, path: str = "kioskfleet"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def _typer_commands(
    command: typer.core.TyperCommand | typer.core.TyperGroup, path: str = "kioskfleet"
) -> Iterator[tuple[str, typer.core.TyperCommand | typer.core.TyperGroup]]:
    yield path, command
    if isinstance(command, typer.core.TyperGroup):
        for name, child in command.commands.items():
            yield from _typer_commands(
                child,  # type: ignore[arg-type]
                f"{path} {name}",
            )


def test_every_argparse_option_and_argument_has_a_help_text() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in _parsers(cli._parser())
        for action in parser._actions
        if not isinstance(action, _NO_HELP_NEEDED) and not (action.help or "").strip()
    ]
    assert missing == []


def test_every_argparse_option_shows_its_default_or_says_what_its_absence_means() -> None:
    silent = []
    for path, parser in _parsers(cli._parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, _NO_HELP_NEEDED) or not action.option_strings:
                continue
            if action.nargs == 0:  # a flag: present or not
                continue
            help_text = (action.help or "").lower()
            if action.default is not None:
                assert str(action.default) in text or "default" in help_text, (path, action)
            elif "default" not in help_text and "required" not in help_text:
                silent.append(f"{path} {action.option_strings[0]}")
    assert silent == []


def test_every_typer_option_has_a_help_text_and_shows_its_default() -> None:
    root = typer.main.get_command(updates_app)
    assert isinstance(root, typer.core.TyperGroup)
    missing, checked = [], 0
    for path, command in _typer_commands(root):
        for param in command.params:
            if isinstance(param, typer.core.TyperOption) and param.name != "help":
                checked += 1
                if not (param.help or "").strip():
                    missing.append(f"{path} {param.opts[0]}")
                elif param.default is not None and not param.required:
                    assert param.show_default is not False, (path, param.opts)
    assert missing == []
    assert checked > 20  # the walk reached the commands' options


def test_the_overview_groups_every_command_once_with_its_one_line_help() -> None:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    grouped = [name for _, names in cli.COMMAND_GROUPS for name in names]
    assert sorted(grouped) == sorted(sub.choices)
    assert len(grouped) == len(set(grouped))
    text = parser.format_help()
    for action in sub._choices_actions:
        assert action.help
        assert "\n" not in action.help
        assert f"  {action.dest}" in text
        assert action.help in text
    assert "examples:" in text
    assert "kioskfleet server --env-file" in text


def test_server_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["server", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert len(settings_table()) == len(Settings.model_fields)
    for variable, default in settings_table():
        line = next(line for line in out.splitlines() if line.split()[:1] == [variable])
        assert line.split()[1] == default
    assert "KIOSKFLEET_DATABASE_URL" in out
    assert "sqlite:///var/kioskfleet.db" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--verbose", "server"],
        ["server", "--log-format", "json", "--verbose"],
    ],
)
def test_the_logging_options_work_before_and_after_the_command(argv: list[str]) -> None:
    args = cli._parser().parse_args(argv)
    assert (args.command, args.log_format, args.verbose, args.log_level) == (
        "server",
        "json",
        True,
        "INFO",
    )


def test_a_commands_logging_options_do_not_undo_the_top_levels() -> None:
    args = cli._parser().parse_args(["--log-format", "json", "db", "upgrade"])
    assert args.log_format == "json"
