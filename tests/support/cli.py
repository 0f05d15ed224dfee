"""Running `svai` commands in-process and checking their one-line user errors."""

from __future__ import annotations

from typer.testing import CliRunner

from svai.cli import app

TINY = ["--image-size", "32", "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.sample_every=0"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
