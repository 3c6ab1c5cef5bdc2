"""Every job's --help describes it in plain text: the module docstring without its reST quoting."""

from __future__ import annotations

import importlib

import pytest

from jobs.cli import JOBS


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help_names_the_command_without_rest_quoting(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"jobs.{job}").main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: lateline {job} ") and f"\nlateline {job}" in shown
    assert "``" not in shown
