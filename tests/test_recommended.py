"""The recommended model, trained with its preset's settings on a built-in dataset the demo and
the results table never use, beats doing nothing with the composite it generates by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from svai.composite import CompositeOptions
from svai.config import resolve
from svai.data.synthetic import write_synthetic_dataset
from svai.generate import Generation, generate_folder, load_model
from svai.metrics.evaluate import evaluate_folders
from svai.models.registry import recommended_model
from svai.train import train

UNSEEN_SEED = 7  # the demo and docs/results.md use seed 0
CHECKED = ("ssim", "psnr", "ssim_changed", "psnr_changed")


@pytest.mark.slow
def test_recommended_model_beats_doing_nothing_on_an_unseen_dataset(tmp_path: Path) -> None:
    name = recommended_model()
    config = resolve(name, sets=["train.mixed_precision=bf16", "train.sample_every=0", "train.evaluate=false"])
    data = tmp_path / "data"
    # The preset's own size and the results table's number of pairs.
    write_synthetic_dataset(data, count=300, size=config.data.image_size, seed=UNSEEN_SEED)
    config.data.root = str(data)
    run = tmp_path / "run"
    train(config, run)
    model = load_model(run, device="cpu")
    assert model.config.generate.composite  # what `svai generate` does for this run by default
    test = data / "test"
    generate_folder(model, test / "before", tmp_path / "pred", Generation(composite=CompositeOptions()))
    result = evaluate_folders(tmp_path / "pred", test / "after", metrics=["ssim", "psnr"], masks=test / "masks",
                              baseline=test / "before", use_cache=False)
    ours = {key: result["metrics"][key]["mean"] for key in CHECKED}
    nothing = {key: result["baseline"]["metrics"][key]["mean"] for key in CHECKED}
    assert all(ours[key] > nothing[key] for key in CHECKED), (ours, nothing)
