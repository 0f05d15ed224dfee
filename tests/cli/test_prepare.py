"""`svai prepare` on the command line: exit codes, summary, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from svai.cli import app

runner = CliRunner()


def photo(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)


def test_photos_prepared_with_summary(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        photo(src / "eyelid" / f"{i}_before.jpg", i)
        photo(src / "eyelid" / f"{i}_after.jpg", 10 + i)
    (src / "eyelid" / "9_before.jpg").write_bytes(b"")
    (src / "eyelid" / "9_after.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = runner.invoke(app, ["prepare", str(src), str(out), "--size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "pairs written" in result.output and "empty file" in result.output
    assert (out / "manifest.csv").is_file() and (out / "skipped.csv").is_file()
    assert len(list(out.glob("*/before/*.png"))) == 3
    again = runner.invoke(app, ["prepare", str(src), str(out), "--size", "32", "--workers", "1"])
    assert again.exit_code == 0
    assert "kept from the last run" in again.output


def test_nothing_usable_is_exit_2_without_traceback(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_before.jpg").write_text("not an image")
    (src / "a_after.jpg").write_text("not an image")
    result = runner.invoke(app, ["prepare", str(src), str(tmp_path / "out"), "--workers", "1"])
    assert result.exit_code == 2
    assert "no pair could be prepared" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_input_problems_are_one_line_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    photo(src / "a_before.jpg")
    photo(src / "a_after.jpg")
    cases = [
        ([str(src), str(src / "out")], "inside SOURCE"),
        ([str(tmp_path / "missing"), str(tmp_path / "out")], "does not exist"),
        ([str(src), str(tmp_path / "out"), "--pairing", "magic"], "--pairing must be one of"),
        ([str(src), str(tmp_path / "out"), "--crop", "chin"], "--crop must be one of"),
        ([str(src), str(tmp_path / "out"), "--labels", str(tmp_path / "none.yaml")], "--labels"),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, ["prepare", *arguments])
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.stderr
        assert "Traceback" not in result.output + result.stderr
    assert not (src / "out").exists()


def test_synthetic_branch_still_works(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(app, ["prepare", "synthetic", str(out), "--count", "4", "--size", "32", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*/before/*.png"))) == 4
    with Image.open(next(out.glob("*/before/*.png"))) as image:
        assert image.size == (32, 32)
    again = runner.invoke(app, ["prepare", "synthetic", str(out), "--count", "4"])
    assert again.exit_code == 2 and "not empty" in again.stderr
