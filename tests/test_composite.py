"""Composites: feathering, the exact blend, the change-map fallback, region lookup, and
`svai generate --composite` on a tiny trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svai.composite import CompositeOptions, RegionLookup, blend, change_map, composite, feather, union
from svai.data.layout import read_manifest
from svai.data.regions import index_regions
from tests.support.cli import invoke, tiny_pix2pix_run


def disk(size: int, centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def distance_to(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel to the nearest region pixel, by brute force."""
    rows, cols = np.mgrid[:region.shape[0], :region.shape[1]]
    inside = np.argwhere(region)
    d = np.sqrt((rows[..., None] - inside[:, 0]) ** 2 + (cols[..., None] - inside[:, 1]) ** 2)
    return d.min(axis=-1)


# ------------------------------------------------------------------------------- library level

def test_feather_is_one_on_the_region_zero_beyond_its_radius_and_in_between_else() -> None:
    region = disk(48, (20, 24), 6)
    weight = feather(region, radius=5.0)
    assert weight.dtype == np.float32 and weight.shape == region.shape
    assert weight.min() >= 0.0 and weight.max() <= 1.0
    assert np.all(weight[region] == 1.0)
    far = distance_to(region) > 5.0
    assert np.all(weight[far] == 0.0)
    # A soft edge: weights strictly between 0 and 1 just outside the region.
    ring = ~region & ~far
    assert np.any((weight[ring] > 0.05) & (weight[ring] < 0.95))
    assert not feather(np.zeros((8, 8), bool), 3.0).any()


def test_feathering_is_monotone_in_the_distance_and_in_the_region() -> None:
    region = disk(64, (32, 32), 8)
    weight = feather(region, radius=9.0)
    # Along each axis away from the disk, the weight never grows.
    for profile in (weight[32, 32:], weight[32, 32::-1], weight[32:, 32], weight[32::-1, 32]):
        assert np.all(np.diff(profile) <= 1e-7)
    # A larger region never gives a smaller weight anywhere.
    larger = region | disk(64, (40, 44), 5)
    assert np.all(feather(larger, 9.0) >= weight)


def test_blend_keeps_zero_weight_pixels_byte_identical() -> None:
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    prediction = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    weight = np.zeros((20, 30), np.float32)
    weight[5:10, 5:20] = 1.0
    weight[12, :] = 0.5
    out = blend(before, prediction, weight)
    assert out.dtype == np.uint8
    assert np.array_equal(out[weight == 0], before[weight == 0])
    assert np.array_equal(out[weight == 1], prediction[weight == 1])
    half = np.rint((before[12].astype(float) + prediction[12]) / 2)
    assert np.all(np.abs(out[12] - half) <= 1)


def test_composite_leaves_everything_outside_the_feathered_region_untouched() -> None:
    rng = np.random.default_rng(1)
    before = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    prediction = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)  # changed everywhere
    region = np.zeros((40, 56), bool)
    region[10:20, 15:30] = True
    options = CompositeOptions(feather=0.1)
    out, weight = composite(before, prediction, region, options)
    outside = distance_to(region) > options.radius(40, 56)
    assert outside.sum() > 1000
    assert np.array_equal(out[outside], before[outside])
    assert np.array_equal(out[region], prediction[region])
    assert np.all(weight[outside] == 0)


def test_without_any_region_the_models_change_map_is_used() -> None:
    rng = np.random.default_rng(2)
    before = rng.integers(40, 200, (48, 48, 3), dtype=np.uint8)
    prediction = before.copy()
    changed = disk(48, (30, 20), 6)
    prediction[changed] = 255 - prediction[changed]
    # Faint noise everywhere, as any model leaves: below the threshold, so not in the map.
    noise = rng.integers(-3, 4, before.shape)
    prediction = np.clip(prediction.astype(int) + noise, 0, 255).astype(np.uint8)
    options = CompositeOptions()
    found = change_map(before, prediction, options.change_threshold, options.radius(48, 48))
    assert found[30, 20] and not found[5, 40]
    out, weight = composite(before, prediction, None, options)
    outside = weight == 0
    assert outside.mean() > 0.7
    assert np.array_equal(out[outside], before[outside])
    assert np.array_equal(out[30, 20], prediction[30, 20])


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_region_lookup_prefers_the_dataset_then_the_folder_and_needs_every_chosen_region(tmp_path: Path) -> None:
    left, right, top = np.zeros((8, 8), bool), np.zeros((8, 8), bool), np.zeros((4, 4), bool)
    left[:, :4], right[:, 4:], top[:2] = True, True, True
    _write_mask(tmp_path / "own" / "eyes" / "a.png", left)
    _write_mask(tmp_path / "own" / "jaw" / "a.png", right)
    _write_mask(tmp_path / "given" / "nose" / "sub" / "A.png", top)  # another size, other case
    inputs = tmp_path / "in"
    lookup = RegionLookup(inputs, index_regions(tmp_path / "own"), index_regions(tmp_path / "given"))
    file = inputs / "sub" / "a.jpg"
    assert np.array_equal(lookup.find(file, (8, 8), ("eyes",)), left)
    assert lookup.find(file, (8, 8), ("eyes", "jaw")).all()
    assert lookup.find(file, (8, 8), None).all()  # no procedure chosen: every known region
    # The dataset lacks a nose region: the folder's, fitted to the photo's size.
    expected = np.zeros((8, 8), bool)
    expected[:4] = True
    assert np.array_equal(lookup.find(file, (8, 8), ("nose",)), expected)
    assert lookup.find(file, (8, 8), ("eyes", "nose")) is None
    assert RegionLookup(inputs).find(file, (8, 8), None) is None
    assert np.array_equal(union([left.astype(np.uint8) * 255, right], (8, 8)), np.ones((8, 8), bool))


# ------------------------------------------------------------------------------------ the CLI

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_pix2pix_run(tmp_path_factory.mktemp("composite"), count=16, test_fraction=0.3)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_composite_keeps_pixels_outside_the_procedures_regions(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = trained
    # A copy of the dataset without its change masks: the composite must not need them.
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shutil.rmtree(copy / "test" / "masks")
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert invoke("generate", "--run", run, "--input", copy / "test" / "before", "--output", raw).exit_code == 0
    result = invoke("generate", "--run", run, "--input", copy / "test" / "before", "--output", out, "--composite")
    assert result.exit_code == 0, result.output
    assert "regions" in result.stdout
    records = [r for r in read_manifest(copy) if r.split == "test"]
    assert records
    options = CompositeOptions()
    for record in records:
        before = _png(copy / "test" / "before" / f"{record.id}.png")
        made = _png(out / f"{record.id}.png")
        region = union([np.asarray(Image.open(copy / "test" / "regions" / p / f"{record.id}.png"))
                        for p in record.procedures], before.shape[:2])
        outside = distance_to(region) > options.radius(*before.shape[:2])
        assert outside.any()
        assert np.array_equal(made[outside], before[outside]), record.id
        expected, _ = composite(before, _png(raw / f"{record.id}.png"), region, options)
        assert np.array_equal(made, expected), record.id


def test_generate_composite_without_any_region_uses_the_change_map(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = trained
    photos = tmp_path / "photos"
    (photos / "clinic").mkdir(parents=True)
    files = sorted((data / "test" / "before").iterdir())[:2]
    for file in files:
        shutil.copy(file, photos / "clinic" / file.name)
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert invoke("generate", "--run", run, "--input", photos, "--output", raw).exit_code == 0
    result = invoke("generate", "--run", run, "--input", photos, "--output", out, "--composite")
    assert result.exit_code == 0, result.output
    assert "change map (2)" in result.stdout
    # An untrained pix2pix redraws the whole photo, so here the change map may cover it all;
    # what matters is that the CLI made exactly the library's composite, with no region at all.
    for file in files:
        before = _png(file)
        expected, weight = composite(before, _png(raw / "clinic" / file.name), None)
        made = _png(out / "clinic" / file.name)
        assert np.array_equal(made, expected)
        assert np.array_equal(made[weight == 0], before[weight == 0])


def test_generate_composite_reads_a_regions_folder_for_plain_inputs(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = trained
    photos, regions = tmp_path / "photos", tmp_path / "regions"
    file = sorted((data / "test" / "before").iterdir())[0]
    (photos / "clinic").mkdir(parents=True)
    shutil.copy(file, photos / "clinic" / "p1.png")
    nose = np.zeros((32, 32), bool)
    nose[12:20, 12:20] = True
    _write_mask(regions / "nose" / "clinic" / "p1.png", nose)
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert invoke("generate", "--run", run, "--input", photos, "--output", raw).exit_code == 0
    result = invoke("generate", "--run", run, "--input", photos, "--output", out, "--composite",
                    "--regions", regions)
    assert result.exit_code == 0, result.output
    before, made = _png(file), _png(out / "clinic" / "p1.png")
    expected, weight = composite(before, _png(raw / "clinic" / "p1.png"), nose)
    assert np.array_equal(made, expected)
    assert (weight == 0).mean() > 0.5
    assert np.array_equal(made[weight == 0], before[weight == 0])


def test_regions_without_composite_is_a_user_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    (tmp_path / "regions" / "nose").mkdir(parents=True)
    result = invoke("generate", "--run", run, "--input", data / "test" / "before", "--output", tmp_path / "o",
                    "--regions", tmp_path / "regions")
    assert result.exit_code == 2
    assert "--composite" in result.stderr and "Traceback" not in result.output


def test_a_run_whose_config_composites_does_so_by_default_and_no_composite_turns_it_off(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = trained
    composited = tmp_path / "run"
    shutil.copytree(run, composited)
    config = composited / "config.yaml"
    text = config.read_text()
    assert "composite: false" in text
    config.write_text(text.replace("composite: false", "composite: true"))
    explicit, default, off = tmp_path / "explicit", tmp_path / "default", tmp_path / "off"
    before = data / "test" / "before"
    assert invoke("generate", "--run", run, "--input", before, "--output", explicit, "--composite").exit_code == 0
    result = invoke("generate", "--run", composited, "--input", before, "--output", default)
    assert result.exit_code == 0, result.output
    assert "composited inside" in result.stdout
    result = invoke("generate", "--run", composited, "--input", before, "--output", off, "--no-composite")
    assert result.exit_code == 0 and "composited" not in result.stdout
    raw = tmp_path / "raw"
    assert invoke("generate", "--run", run, "--input", before, "--output", raw).exit_code == 0
    for file in sorted(before.iterdir()):
        assert np.array_equal(_png(default / file.name), _png(explicit / file.name))
        assert np.array_equal(_png(off / file.name), _png(raw / file.name))
