"""svai.api: the same pixels as `svai generate`, the same run folder as `svai train`, the same
numbers as `svai evaluate`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import svai
from svai import api
from svai.errors import SvaiError
from tests.support.cli import run_ok

TINY = ["model.ngf=8", "model.ndf=8", "train.sample_every=0"]



def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, api.Trained]:
    root = tmp_path_factory.mktemp("api")
    data = api.prepare("synthetic", root / "data", count=16, size=32, seed=2, test_fraction=0.25)
    assert data.pairs["train"] + data.pairs["test"] == 16 and data.pairs["test"] > 0
    result = api.train("pix2pix-warp", data.path, root / "run", steps=2, image_size=32, sets=TINY)
    return data.path, result


def test_train_makes_the_run_folder_the_command_makes(trained) -> None:
    data, result = trained
    assert (result.step, result.total_steps, result.interrupted) == (2, 2, False)
    assert {"config.yaml", "log.jsonl", "checkpoints", "environment.json", "evaluation.json"} <= \
        {p.name for p in result.path.iterdir()}
    assert result.evaluation == json.loads((result.path / "evaluation.json").read_text())
    tests = sorted(p.stem for p in (data / "test" / "before").iterdir())
    assert sorted(result.evaluation["metrics"]["ssim"]["per_image"]) == tests
    command = json.loads((result.path / "environment.json").read_text())["command"]
    assert command.startswith("svai.api.train(model=pix2pix-warp, data=") and "steps=2" in command


def test_a_dataset_photo_simulates_to_the_pixels_svai_generate_writes(trained, tmp_path: Path) -> None:
    data, result = trained
    before = data / "test" / "before"
    run_ok("generate", "--run", result.path, "--input", before, "--output", tmp_path / "cli")  # batches of 8
    run = svai.load_run(result.path)
    assert run.composite_default is True and run.name == "pix2pix-warp" and run.step == 2
    for photo in sorted(before.iterdir()):
        simulated = run.simulate(photo)
        assert simulated.mode == "RGB"
        assert np.array_equal(np.asarray(simulated), pixels(tmp_path / "cli" / photo.name)), photo.name


@pytest.mark.parametrize("options, flags", [
    ({}, []),
    ({"intensity": 0.5}, ["--intensity", "0.5"]),
    ({"composite": False}, ["--no-composite"]),
])
def test_pixels_in_memory_match_generate_on_a_plain_folder(trained, tmp_path: Path, options, flags) -> None:
    data, result = trained
    plain = tmp_path / "photos"  # not a dataset split: no labels, no regions; the change map is the region
    shutil.copytree(data / "test" / "before", plain)
    run_ok("generate", "--run", result.path, "--input", plain, "--output", tmp_path / "cli", *flags)
    run = api.load_run(result.path)
    for photo in sorted(plain.iterdir()):
        expected = pixels(tmp_path / "cli" / photo.name)
        assert np.array_equal(np.asarray(run.simulate(Image.open(photo), **options)), expected), photo.name
        assert np.array_equal(np.asarray(run.simulate(pixels(photo), **options)), expected), photo.name


def test_regions_in_memory_match_a_regions_folder(trained, tmp_path: Path) -> None:
    data, result = trained
    photo = sorted((data / "test" / "before").iterdir())[0]
    plain = tmp_path / "photos"
    plain.mkdir()
    shutil.copy(photo, plain / photo.name)
    region = np.zeros((32, 32), dtype=bool)
    region[8:20, 10:24] = True
    (tmp_path / "regions" / "nose").mkdir(parents=True)
    Image.fromarray(region.astype(np.uint8) * 255).save(tmp_path / "regions" / "nose" / photo.name)
    run_ok("generate", "--run", result.path, "--input", plain, "--output", tmp_path / "cli", "--composite",
           "--regions", tmp_path / "regions")
    run = api.load_run(result.path)
    simulated = np.asarray(run.simulate(pixels(photo), composite=True, regions={"nose": region}))
    assert np.array_equal(simulated, pixels(tmp_path / "cli" / photo.name))
    # The same region as an image, at another size, lands on the same pixels.
    large = Image.fromarray(np.kron(region, np.ones((2, 2), dtype=bool)).astype(np.uint8) * 255)
    assert np.array_equal(np.asarray(run.simulate(pixels(photo), composite=True, regions={"nose": large})), simulated)


@pytest.mark.parametrize("call, message", [
    (lambda run, photo: run.simulate(photo, seed=3), "seed: pix2pix-warp models do not use it"),
    (lambda run, photo: run.simulate(photo, procedures="nose"), "procedures: pix2pix-warp models do not use it"),
    (lambda run, photo: run.simulate(photo, intensity=2.0), "intensity must be between 0 and 1"),
    (lambda run, photo: run.simulate(np.zeros((8, 8, 3), np.float32)), "uint8"),
    (lambda run, photo: run.simulate(42), "a file path, a PIL image or a numpy array"),
    (lambda run, photo: run.simulate(photo, composite=False, regions={"nose": np.ones((4, 4), bool)}),
     "composite=True"),
])
def test_mistakes_are_one_line_errors(trained, call, message) -> None:
    data, result = trained
    run = api.load_run(result.path)
    photo = sorted((data / "test" / "before").iterdir())[0]
    with pytest.raises(SvaiError, match=message.replace("(", r"\(")):
        call(run, photo)


def test_procedures_take_the_command_lines_forms() -> None:
    assert api._procedure_text("nose+jaw") == "nose+jaw"
    assert api._procedure_text(["nose", "jaw"]) == "nose+jaw"
    assert api._procedure_text({"nose": 0.5, "jaw": 1.0}) == "nose:0.5+jaw:1.0"


def test_evaluate_gives_the_numbers_svai_evaluate_writes(trained, tmp_path: Path) -> None:
    data, result = trained
    pred = result.path / "test-predictions"
    run_ok("evaluate", "--pred", pred, "--target", data / "test" / "after", "--baseline", data / "test" / "before",
           "--metrics", "ssim,psnr", "--json", tmp_path / "cli.json")
    scores = api.evaluate(pred, data / "test" / "after", baseline=data / "test" / "before", metrics=["ssim", "psnr"],
                          json=tmp_path / "api.json")
    cli = json.loads((tmp_path / "cli.json").read_text())
    assert scores["metrics"] == cli["metrics"] and scores["baseline"]["metrics"] == cli["baseline"]["metrics"]
    assert json.loads((tmp_path / "api.json").read_text())["metrics"] == cli["metrics"]


def test_prepare_refuses_options_it_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(SvaiError, match="crop: synthetic data takes only"):
        api.prepare("synthetic", tmp_path / "d", crop="face")
    with pytest.raises(SvaiError, match="colour: not an option of prepare"):
        api.prepare(tmp_path, tmp_path / "out", colour="red")


def test_import_svai_stays_light_and_exports_the_api_lazily() -> None:
    code = ("import sys, svai; light = 'torch' not in sys.modules and 'svai.api' not in sys.modules; "
            "import svai.api as api; print(light, svai.load_run is api.load_run, svai.Run is api.Run, "
            "svai.prepare is api.prepare, svai.evaluate is api.evaluate)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["True"] * 5, done.stderr
    with pytest.raises(AttributeError):
        svai.no_such_name  # noqa: B018
