"""No product command-line tool carries a hidden option: test faults and short periods live in testing."""

from __future__ import annotations

import argparse

import pytest

from custom.convert.cli import build_parser as convert_parser
from custom.daemon.cli import build_parser as sensord_parser
from custom.ingest.cli import _parser as ingest_parser


def _hidden(parser: argparse.ArgumentParser, path: str) -> list[str]:
    found = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS and action.option_strings:
            found.append(f"{path} {'/'.join(action.option_strings)}")
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _hidden(sub, f"{path} {name}")
    return found


@pytest.mark.parametrize(
    ("name", "build"),
    [("custom-sensord", sensord_parser), ("custom-ingest", ingest_parser), ("custom-convert", convert_parser)],
)
def test_no_hidden_options(name: str, build) -> None:
    assert _hidden(build(), name) == []
