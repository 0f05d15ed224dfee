"""The evaluation driver: per-image values against the reference libraries, regions, baseline,
unavailable metrics, skipped files, the JSON, and the target-feature cache."""

from __future__ import annotations

import json
import shutil
import warnings
from importlib import metadata
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from svai.errors import SvaiError
from svai.metrics import evaluate as driver
from svai.metrics.evaluate import evaluate_folders, write_json
from svai.metrics.options import EvaluateOptions

SIZE = (40, 48)  # H, W: small, non-square, above LPIPS' 32 px minimum
COUNT = 6


def smooth(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    coarse = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.BILINEAR))


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    """A prepared-style layout DATA/test/{before,after,masks} plus a pred folder.

    Pair 000 has pred == target (identical); mask 001 is empty (no changed pixels);
    the others change a rectangle.
    """
    rng = np.random.default_rng(0)
    data = tmp_path / "data" / "test"
    pred = tmp_path / "pred"
    for i in range(COUNT):
        key = f"{i:03d}"
        after = smooth(rng, SIZE)
        before = smooth(rng, SIZE)
        mask = np.zeros(SIZE, np.uint8)
        if i != 1:
            mask[5 + i : 25 + i, 8:30] = 255
        noise = rng.integers(-25, 26, after.shape)
        generated = after if i == 0 else np.clip(after.astype(int) + noise, 0, 255).astype(np.uint8)
        save(data / "after" / f"{key}.png", after)
        save(data / "before" / f"{key}.png", before)
        save(data / "masks" / f"{key}.png", mask)
        save(pred / f"{key}.png", generated)
    return {"pred": pred, "target": data / "after", "before": data / "before", "masks": data / "masks"}


def load(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def skimage_ssim(a: np.ndarray, b: np.ndarray, full: bool = False):
    return structural_similarity(
        a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1, data_range=1, full=full,
    )


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    monkeypatch.delenv("SVAI_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path / "cache"))


def test_ssim_and_psnr_per_image_match_skimage(dataset: dict[str, Path], no_weights: None) -> None:
    result = evaluate_folders(dataset["pred"], dataset["target"], EvaluateOptions(metrics=["ssim", "psnr"], batch_size=4))
    ssim_entry, psnr_entry = result["metrics"]["ssim"], result["metrics"]["psnr"]
    ssim_diffs, psnr_diffs = [], []
    for i in range(COUNT):
        key = f"{i:03d}"
        a, b = load(dataset["pred"] / f"{key}.png"), load(dataset["target"] / f"{key}.png")
        ssim_diffs.append(abs(ssim_entry["per_image"][key] - skimage_ssim(a, b)))
        if i == 0:
            assert psnr_entry["per_image"][key] is None  # identical: no finite PSNR
        else:
            psnr_diffs.append(abs(psnr_entry["per_image"][key] - peak_signal_noise_ratio(b, a)))
    assert max(ssim_diffs) < 1e-4 and max(psnr_diffs) < 1e-6
    assert ssim_entry["n"] == COUNT and ssim_entry["higher_is_better"] is True
    values = np.array(list(ssim_entry["per_image"].values()))
    assert ssim_entry["mean"] == pytest.approx(values.mean()) and ssim_entry["std"] == pytest.approx(values.std())
    # The identical pair is counted and stated, not averaged as an infinity.
    finite = [v for v in psnr_entry["per_image"].values() if v is not None]
    assert psnr_entry["identical"] == 1 and psnr_entry["n"] == COUNT - 1
    assert psnr_entry["mean"] == pytest.approx(np.mean(finite))
    assert "identical" in psnr_entry["warning"]
    assert result["unmatched"] == {"pred_only": [], "target_only": []} and result["skipped"] == []
    assert result["masks"] == str(dataset["masks"].resolve())  # found next to the targets


def test_region_metrics_follow_their_definition(dataset: dict[str, Path], use_torch_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path / "cache"))
    result = evaluate_folders(
        dataset["pred"], dataset["target"],
        EvaluateOptions(metrics=["ssim", "psnr", "lpips"], lpips_net="squeeze", batch_size=4),
    )
    metrics = result["metrics"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_lpips = lpips.LPIPS(net="squeeze", verbose=False)
        reference_spatial = lpips.LPIPS(net="squeeze", spatial=True, verbose=False)
    for i in range(2, COUNT):
        key = f"{i:03d}"
        a, b = load(dataset["pred"] / f"{key}.png"), load(dataset["target"] / f"{key}.png")
        changed = load(dataset["masks"] / f"{key}.png")[..., 0] >= 128
        # SSIM: skimage's map without its 5-pixel border, averaged over each region.
        _, full = skimage_ssim(a, b, full=True)
        ssim_map, region = full[5:-5, 5:-5].mean(axis=-1), changed[5:-5, 5:-5]
        assert metrics["ssim_changed"]["per_image"][key] == pytest.approx(ssim_map[region].mean(), abs=1e-6)
        assert metrics["ssim_kept"]["per_image"][key] == pytest.approx(ssim_map[~region].mean(), abs=1e-6)
        # PSNR: squared error over the region's pixels and channels.
        error = (a.astype(float) - b.astype(float)) ** 2
        expected = 10 * np.log10(255.0**2 / error[changed].mean())
        assert metrics["psnr_changed"]["per_image"][key] == pytest.approx(expected, abs=1e-6)
        expected = 10 * np.log10(255.0**2 / error[~changed].mean())
        assert metrics["psnr_kept"]["per_image"][key] == pytest.approx(expected, abs=1e-6)
        # LPIPS: the package's value, and its spatial map averaged over each region.
        x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1
        y = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            value = reference_lpips(x, y).item()
            spatial = reference_spatial(x, y)[0, 0].numpy()
        assert metrics["lpips"]["per_image"][key] == pytest.approx(value, abs=1e-5)
        assert metrics["lpips_changed"]["per_image"][key] == pytest.approx(spatial[changed].mean(), abs=1e-5)
        assert metrics["lpips_kept"]["per_image"][key] == pytest.approx(spatial[~changed].mean(), abs=1e-5)
    # Pair 001 has an empty mask: no changed-region value, but a kept-region one.
    assert "001" not in metrics["ssim_changed"]["per_image"] and "001" in metrics["ssim_kept"]["per_image"]
    assert metrics["ssim_changed"]["n"] == COUNT - 1 and "no changed pixels" in metrics["ssim_changed"]["warning"]
    # Pair 000 is identical: in the regions too it is counted apart.
    assert metrics["psnr_changed"]["identical"] == 1
    assert set(result["weights"]) == {"squeezenet1_1-b8a52dc0.pth"}
    assert len(result["weights"]["squeezenet1_1-b8a52dc0.pth"]) == 64
    assert result["settings"]["lpips_net"] == "squeeze"


def test_batch_size_does_not_change_values(dataset: dict[str, Path], no_weights: None) -> None:
    one = evaluate_folders(dataset["pred"], dataset["target"], EvaluateOptions(metrics=["ssim", "psnr"], batch_size=1))
    many = evaluate_folders(dataset["pred"], dataset["target"], EvaluateOptions(metrics=["ssim", "psnr"], batch_size=64))
    for metric in ("ssim", "psnr", "ssim_changed", "psnr_kept"):
        assert one["metrics"][metric]["per_image"] == pytest.approx(many["metrics"][metric]["per_image"], abs=1e-12)


def test_baseline_row_is_the_before_images_evaluated_alike(dataset: dict[str, Path], no_weights: None) -> None:
    result = evaluate_folders(
        dataset["pred"], dataset["target"], EvaluateOptions(metrics=["ssim", "psnr"], baseline=dataset["before"], name="p2p")
    )
    alone = evaluate_folders(dataset["before"], dataset["target"], EvaluateOptions(metrics=["ssim", "psnr"]))
    baseline = result["baseline"]
    assert result["name"] == "p2p" and result["role"] == "model"
    assert result["before"] == str(dataset["before"].resolve())
    assert baseline["role"] == "baseline" and baseline["name"] == "baseline" and baseline["baseline"] is None
    assert baseline["pred"] == str(dataset["before"].resolve())
    assert set(baseline) == set(result)
    for metric in ("ssim", "psnr", "ssim_changed", "psnr_kept"):
        assert baseline["metrics"][metric]["per_image"] == pytest.approx(alone["metrics"][metric]["per_image"], abs=1e-12)
    # Unrelated before images are far worse than the near-copies in pred.
    assert baseline["metrics"]["ssim"]["mean"] < result["metrics"]["ssim"]["mean"]


def test_missing_weights_make_metrics_unavailable_not_fatal(dataset: dict[str, Path], no_weights: None) -> None:
    result = evaluate_folders(dataset["pred"], dataset["target"])
    assert set(result["unavailable"]) == {"lpips", "fid", "kid", "is", "identity", "identity_target"}
    assert "--baseline" in result["unavailable"]["identity"]
    assert "svai weights fetch alexnet" in result["unavailable"]["lpips"]
    assert "svai weights fetch inception" in result["unavailable"]["fid"]
    assert all("\n" not in reason for reason in result["unavailable"].values())
    assert {"ssim", "psnr", "ssim_changed", "psnr_kept"} <= set(result["metrics"])
    assert result["versions"]["lpips"] == metadata.version("lpips")


def test_unreadable_and_mismatched_files_are_skipped_and_listed(dataset: dict[str, Path], no_weights: None) -> None:
    (dataset["pred"] / "002.png").write_bytes(b"not a png")
    save(dataset["pred"] / "003.png", np.zeros((SIZE[0] + 2, SIZE[1], 3), np.uint8))
    save(dataset["pred"] / "extra.png", np.zeros((*SIZE, 3), np.uint8))
    result = evaluate_folders(dataset["pred"], dataset["target"],
                              EvaluateOptions(metrics=["ssim", "psnr"], masks=dataset["masks"]))
    skipped = {Path(item["file"]).name: item["reason"] for item in result["skipped"]}
    assert set(skipped) == {"002.png", "003.png"}
    assert "48x42" in skipped["003.png"] and "equal sizes" in skipped["003.png"]
    assert result["metrics"]["ssim"]["n"] == COUNT - 2
    assert result["unmatched"] == {"pred_only": ["extra.png"], "target_only": []}


def test_bad_inputs_are_one_line_errors(dataset: dict[str, Path], tmp_path: Path, no_weights: None) -> None:
    with pytest.raises(SvaiError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", dataset["target"])
    with pytest.raises(SvaiError, match="--metrics 'sharpness'"):
        evaluate_folders(dataset["pred"], dataset["target"], EvaluateOptions(metrics=["ssim,sharpness"]))
    with pytest.raises(SvaiError, match="--fid-dims"):
        evaluate_folders(dataset["pred"], dataset["target"], EvaluateOptions(fid_dims=1000))
    with pytest.raises(SvaiError, match="--masks"):
        evaluate_folders(dataset["pred"], dataset["target"], EvaluateOptions(masks=tmp_path / "no_masks"))
    other = tmp_path / "renamed"
    save(other / "zzz.png", np.zeros((*SIZE, 3), np.uint8))
    with pytest.raises(SvaiError, match="namesake"):
        evaluate_folders(other, dataset["target"], EvaluateOptions(metrics=["ssim"]))


def test_json_is_strict_and_written_atomically(dataset: dict[str, Path], tmp_path: Path, no_weights: None) -> None:
    result = evaluate_folders(dataset["pred"], dataset["target"],
                              EvaluateOptions(metrics=["ssim", "psnr"], baseline=dataset["before"]))
    path = write_json(result, tmp_path / "out" / "evaluation.json")

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == json.loads(json.dumps(result))
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    for key in ("svai_version", "name", "role", "pred", "target", "masks", "before", "metrics", "baseline",
                "unavailable", "unmatched", "skipped", "settings", "weights", "versions"):
        assert key in loaded
    assert loaded["settings"]["ssim"] == "gaussian 11x11 sigma 1.5, RGB in [0,1], channel mean"


SET_IMAGES = 10  # per folder: enough for the checks, few enough for a CPU Inception pass


@pytest.mark.slow
def test_fid_kid_match_pytorch_fid_and_the_cache_skips_targets(
    image_folders: tuple[Path, Path], use_torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance, get_activations
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path / "cache"))
    folders = []
    for source in image_folders:
        folder = tmp_path / source.name
        folder.mkdir()
        for path in sorted(source.glob("*.png"))[:SET_IMAGES]:
            shutil.copy(path, folder / path.name)
        folders.append(folder)
    passes: list[int] = []
    real_pass = driver.inception_pass

    def counting_pass(model, images, dims, device):
        passes.append(len(images))
        return real_pass(model, images, dims, device)

    monkeypatch.setattr(driver, "inception_pass", counting_pass)

    def run() -> dict:
        return evaluate_folders(folders[0], folders[1],
                                EvaluateOptions(metrics=["fid", "kid", "is"], batch_size=SET_IMAGES))

    first = run()
    assert sum(passes) == 2 * SET_IMAGES  # pred and targets, each image once
    passes.clear()
    second = run()
    assert sum(passes) == SET_IMAGES  # the targets came from the cache
    assert second["metrics"] == first["metrics"]  # bit-identical with and without the cache

    # pytorch-fid's own network (it finds the test-made file in $TORCH_HOME) and formula.
    model = InceptionV3([3]).eval()
    x, y = (
        get_activations(sorted(f.glob("*.png")), model, batch_size=SET_IMAGES, dims=2048, device="cpu", num_workers=0)
        .astype(np.float64)
        for f in folders
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...) in pytorch-fid
        expected_fid = calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    fid = first["metrics"]["fid"]
    assert fid["mean"] == pytest.approx(expected_fid, rel=1e-3)
    assert fid["n"] == SET_IMAGES and fid["n_target"] == SET_IMAGES and fid["higher_is_better"] is False
    assert "KID" in fid["warning"] and "--fid-dims" in fid["warning"]

    # KID with subsets as large as the sets is the unbiased MMD^2 of the full sets
    # (Binkowski et al. 2018, polynomial kernel (x.y / d + 1)^3).
    def kernel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u @ v.T / u.shape[1] + 1) ** 3

    m = len(x)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    kid = first["metrics"]["kid"]
    assert kid["mean"] == pytest.approx(mmd, rel=1e-3)
    assert kid["subset_size"] == SET_IMAGES and kid["std"] <= 1e-9 * abs(mmd) + 1e-15
    inception = first["metrics"]["is"]
    # 10 splits of one image each: every part's score is exp(KL(p || p)) = 1.
    assert inception["mean"] == pytest.approx(1.0) and inception["n"] == SET_IMAGES
    assert "pt_inception-2015-12-05-6726825d.pth" in first["weights"]
