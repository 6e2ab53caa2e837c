"""`speechssl` top-level parser: every listed group exists, has a help page, and stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechssl.cli.main import GROUPS, build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _group_names() -> list[str]:
    # a module whose name is a Python keyword (`import`) says its group name in GROUP
    return [getattr(m, "GROUP", m.__name__.rsplit(".", 1)[1]) for m in GROUPS]


def test_help_lists_exactly_the_registered_groups(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == _group_names()  # no phantom group, none missing, pipeline order
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in _group_names():
        assert name in out


@pytest.mark.parametrize("group", _group_names())
def test_each_group_has_help_and_a_bare_group_prints_it(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([group, "--help"])
    assert exc.value.code == 0
    assert f"speechssl {group}" in capsys.readouterr().out
    assert main([group]) == 2  # no verb: the group's help, exit 2
    assert f"speechssl {group}" in capsys.readouterr().out


def test_unknown_group_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["model", "list"])  # not a group of this build
    assert exc.value.code == 2
    assert "invalid choice: 'model'" in capsys.readouterr().err


def test_building_the_parser_imports_no_heavy_library() -> None:
    code = (
        "import sys; from speechssl.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'numpy', 'hydra', 'soundfile', 'transformers') "
        "if m in sys.modules))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert res.stdout.strip() == "[]"
