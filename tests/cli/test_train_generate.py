"""`svai train`, `generate` and `models` through the CLI, and one run through all five commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import TINY, assert_user_error, invoke, tiny_pix2pix_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_pix2pix_run(tmp_path_factory.mktemp("cli"), count=24, test_fraction=0.25)


def test_five_commands_end_to_end(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    out = tmp_path / "pred"
    result = invoke("generate", "--run", run, "--input", data / "test" / "before", "--output", out)
    assert result.exit_code == 0, result.output
    inputs = sorted(p.name for p in (data / "test" / "before").iterdir())
    assert sorted(p.name for p in out.iterdir()) == inputs
    report = tmp_path / "eval.json"
    result = invoke("evaluate", "--pred", out, "--target", data / "test" / "after",
                    "--baseline", data / "test" / "before", "--metrics", "ssim,psnr", "--json", report)
    assert result.exit_code == 0, result.output
    evaluation = json.loads(report.read_text())
    assert evaluation["metrics"]["ssim"]["n"] == len(inputs)
    result = invoke("compare", report, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout and "ssim" in result.stdout


def test_train_evaluates_the_test_split_for_compare(trained: tuple[Path, Path]) -> None:
    data, run = trained
    evaluation = json.loads((run / "evaluation.json").read_text())
    tests = sorted(p.stem for p in (data / "test" / "before").iterdir())
    assert sorted(evaluation["metrics"]["ssim"]["per_image"]) == tests
    assert evaluation["baseline"]["role"] == "baseline" and evaluation["name"] == "pix2pix"
    result = invoke("compare", run, "--format", "json")
    assert result.exit_code == 0, result.output
    assert {row["name"] for row in json.loads(result.stdout)["rows"]} >= {"pix2pix", "baseline"}


def test_generate_keeps_relative_paths_and_sizes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = trained
    source = tmp_path / "photos"
    (source / "Clinic A" / "deep").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)).save(source / "wide.JPG")
    Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(source / "Clinic A" / "deep" / "tall.webp")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(source / "Clinic A" / "gray.tif")
    (source / "notes.txt").write_text("not an image")
    (source / "broken.png").write_bytes(b"\x89PNG broken")
    snapshot = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}

    out = tmp_path / "out"
    result = invoke("generate", "--run", run, "--input", source, "--output", out, "--batch-size", "2")
    # the broken file is reported and makes the exit code 2, but every good image is written
    assert result.exit_code == 2
    assert "broken.png" in result.stderr and "Traceback" not in result.output
    expected = {"wide.png": (64, 40), "Clinic A/deep/tall.png": (30, 50), "Clinic A/gray.png": (32, 32)}
    for name, size in expected.items():
        with Image.open(out / name) as image:
            assert image.size == size and image.mode == "RGB"
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == snapshot


def test_generate_is_deterministic_and_matches_checkpoint_choice(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    first, second = tmp_path / "a", tmp_path / "b"
    for out, checkpoint in ((first, "latest"), (second, "2")):
        assert invoke("generate", "--run", run, "--input", data / "test" / "before", "--output", out,
                      "--checkpoint", checkpoint).exit_code == 0
    for file in first.iterdir():
        assert np.array_equal(np.asarray(Image.open(file)), np.asarray(Image.open(second / file.name)))


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--model", "pix3pix", "--data", "{data}", "--out", "{tmp}/r"], ["pix3pix", "pix2pix", "cyclegan-attn"]),
        (["train", "--model", "pix2pix", "--data", "{tmp}/nowhere", "--out", "{tmp}/r"], ["--data", "nowhere"]),
        (["train", "--model", "pix2pix", "--data", "{data}", "--out", "{tmp}/r", "--mixed-precision", "fp8"], ["--mixed-precision"]),
        (["train", "--model", "pix2pix", "--data", "{data}", "--out", "{tmp}/r", "--set", "model.bogus=1"], ["model.bogus"]),
        (["train", "--model", "pix2pix", "--data", "{data}", "--out", "{tmp}/r", "--set", "train.steps=x"], ["train.steps"]),
        (["train", "--out", "{tmp}/never-trained", "--resume"], ["never-trained"]),
        (["train", "--model", "pix2pix", "--data", "{tmp}/empty", "--out", "{tmp}/r"], ["manifest.csv"]),
        (["train", "--model", "pix2pix", "--data", "{data}", "--out", "{data}/run"], ["--out", "inside --data"]),
        (["generate", "--run", "{tmp}/none", "--input", "{data}", "--output", "{tmp}/o"], ["none"]),
        (["generate", "--run", "{run}", "--input", "{tmp}/empty", "--output", "{tmp}/o"], ["empty", "no images"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{data}/test/before/x"], ["--output", "inside"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{tmp}/o", "--checkpoint", "99"], ["--checkpoint 99"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{tmp}/o", "--procedures", "ears"], ["--procedures", "ears", "eyes, nose, jaw"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{tmp}/o", "--reference", "{data}/test/after"], ["--reference", "pix2pix"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{tmp}/o", "--intensity", "2"], ["--intensity", "between 0 and 1"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{tmp}/o", "--seed", "3"], ["--seed", "pix2pix"]),
        (["generate", "--run", "{run}", "--input", "{data}/test/before", "--output", "{tmp}/o", "--reference", "{tmp}/empty"], ["--reference", "no images"]),
        (["generate", "--run", "{run}", "--input", "{data}/test", "--output", "{data}"], ["--output", "holds --input"]),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], fragments: list[str], trained, tmp_path: Path) -> None:
    data, run = trained
    (tmp_path / "empty").mkdir()
    filled = [a.format(data=data, run=run, tmp=tmp_path) for a in args]
    assert_user_error(invoke(*filled), *fragments)


def test_train_refuses_to_overwrite_and_resume_continues(trained: tuple[Path, Path]) -> None:
    data, run = trained
    assert_user_error(invoke("train", "--model", "pix2pix", "--data", data, "--out", run, "--steps", "3", *TINY),
                      "--resume")
    result = invoke("train", "--out", run, "--resume", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000003"


def test_models_lists_every_model_with_parameter_counts() -> None:
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"pix2pix", "cyclegan", "cyclegan-attn", "cyclegan-attn-gd"} <= set(rows)
    # the reference implementations' counts at default width and 256 px
    assert rows["pix2pix"]["parameters"] == {"G": 54_413_955, "D": 2_768_705}
    assert rows["cyclegan"]["parameters"]["G_AB"] == 11_378_179
    assert rows["cyclegan"]["parameters"]["D_A"] == 2_764_737
    assert rows["cyclegan"]["paired"] is False and rows["pix2pix"]["paired"] is True
    assert rows["cyclegan-attn-gd"]["parameters"]["D_A"] > rows["cyclegan-attn"]["parameters"]["D_A"]
    assert rows["pix2pix"]["controls"] == ["--intensity"]


def test_exactly_one_model_is_recommended_and_its_preset_holds_the_winning_settings() -> None:
    from svai.run import resolve

    rows = json.loads(invoke("models", "--json").stdout)
    recommended = [row["name"] for row in rows if row["recommended"]]
    assert recommended == ["landmark-warp"]
    # The settings of the row docs/results.md shows best: the landmark warp at 128 px, fitted
    # (one step), confined to the ticked regions by itself (no composite), steered by
    # procedures and intensity.
    config = resolve("landmark-warp")
    assert config.family == "landmark-warp" and config.data.image_size == 128 and config.train.steps == 1
    assert config.generate.composite is False and config.model.refine == "none"
    row = next(row for row in rows if row["name"] == "landmark-warp")
    assert row["controls"] == ["--intensity", "--procedures"] and row["parameters"] == {}
    assert resolve("pix2pix").generate.composite is False


@pytest.mark.parametrize("command", ["prepare", "train", "generate", "evaluate", "compare", "models", "weights"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "svai " + command in result.stdout.replace("\n", " ") or "Example" in result.stdout


@pytest.mark.parametrize("command", ["prepare", "train", "generate", "evaluate", "compare", "models", "weights"])
def test_help_shows_no_internal_type_names(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for name in ("<bool>", "<str>", "<int>", "<path>", "<float>", "list[", "<list"):
        assert name not in result.stdout, (command, name)
    if command == "train":
        assert "KEY=VALUE" in result.stdout and "no|fp16|bf16" in result.stdout


def test_resume_with_nothing_left_to_train_redoes_a_cut_short_evaluation(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "evaluation.json").unlink()  # what a SIGTERM during the evaluation leaves
    steps_before = sorted(p.name for p in (copy / "checkpoints").glob("step-*"))
    result = invoke("train", "--out", copy, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "evaluation.json").read_text())["metrics"]["ssim"]["n"] > 0
    assert sorted(p.name for p in (copy / "checkpoints").glob("step-*")) == steps_before


def test_a_batch_larger_than_the_dataset_is_warned_about(trained: tuple[Path, Path], tmp_path: Path, caplog) -> None:
    data, _ = trained
    pairs = len(list((data / "train" / "before").iterdir()))
    with caplog.at_level("WARNING"):
        result = invoke("train", "--model", "pix2pix", "--data", data, "--out", tmp_path / "r", "--steps", "1",
                        "--batch-size", str(pairs + 1), "--set", "train.evaluate=false", *TINY)
    assert result.exit_code == 0, result.output
    assert any("larger than" in r.getMessage() and str(pairs) in r.getMessage() for r in caplog.records)
