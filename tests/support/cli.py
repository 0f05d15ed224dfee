"""Running `svai` commands in-process and checking their one-line user errors."""

from __future__ import annotations

from pathlib import Path

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


def tiny_pix2pix_run(root: Path, count: int, test_fraction: float) -> tuple[Path, Path]:
    """(dataset, run): `count` synthetic pairs at 32 px under `root`, and a tiny pix2pix trained
    on them for two steps."""
    data, run = root / "data", root / "run"
    assert invoke("prepare", "synthetic", data, "--count", str(count), "--size", "32", "--seed", "3",
                  "--test-fraction", str(test_fraction)).exit_code == 0
    result = invoke("train", "--model", "pix2pix", "--data", data, "--out", run, "--steps", "2", *TINY)
    assert result.exit_code == 0, result.output
    return data, run


def run_ok(*args: object):  # type: ignore[no-untyped-def]
    """`svai ARGS` in-process, asserted to succeed; its result."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result
