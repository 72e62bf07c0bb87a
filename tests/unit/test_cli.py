"""The CLI's parser without running anything: every subcommand and option says what it does, and
`dlq replay` refuses to replay everything by default. The commands themselves run as real
processes in tests/acceptance/test_cli.py."""

from __future__ import annotations

import argparse

import pytest

from jobqueue.cli import UsageError, _replay_args, build_parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{parser.prog} {name}"] = sub
                found.update(subparsers(sub))
    return found


def test_every_subcommand_and_option_has_help() -> None:
    parser = build_parser()
    commands = {parser.prog: parser, **subparsers(parser)}
    assert {"jobqueue list", "jobqueue cancel", "jobqueue retry", "jobqueue dlq replay"} <= set(commands)
    for name, command in commands.items():
        assert command is parser or command.description, name
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), name
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.dest}"


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["1", "2"], ([1, 2], None, None)),
        (["--queue", "q"], (None, "q", None)),
        (["--queue", "q", "--type", "t"], (None, "q", "t")),
        (["--all"], (None, None, None)),
    ],
)
def test_replay_arguments(argv: list[str], expect: tuple[object, ...]) -> None:
    assert _replay_args(build_parser().parse_args(["dlq", "replay", *argv])) == expect


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "needs ids, --queue and/or --type, or --all"),
        (["1", "--type", "t"], "not both"),
        (["--all", "1"], "give it no ids"),
        (["--all", "--queue", "q"], "give it no ids"),
    ],
)
def test_replay_refuses_nothing_and_contradictions(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _replay_args(build_parser().parse_args(["dlq", "replay", *argv]))


def test_priority_takes_a_number_or_a_name() -> None:
    assert build_parser().parse_args(["enqueue", "echo", "--priority", "7"]).priority == 7
    assert build_parser().parse_args(["enqueue", "echo", "--priority", "high"]).priority == "high"
    assert build_parser().parse_args(["enqueue", "echo"]).priority is None
