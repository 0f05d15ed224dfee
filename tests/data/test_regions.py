"""Procedure regions for real photos: `svai prepare --regions` and the region folder format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svai.cli import app
from svai.data.layout import read_manifest
from svai.data.options import PrepareOptions
from svai.data.prepare import prepare_dataset
from svai.data.regions import fit_region, index_regions, read_region
from svai.errors import SvaiError

SIZE = 30


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def options(**overrides) -> PrepareOptions:  # type: ignore[no-untyped-def]
    return PrepareOptions(**{"size": SIZE, "workers": 1, "test_fraction": 0.0, **overrides})


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Two 80x60 pairs, `p1` and `p2`: a centre crop keeps columns 10-70."""
    src = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name in ("p1", "p2"):
        for role in ("before", "after"):
            save(src / role / f"{name}.png", rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return src


def left_half(width: int = 80, height: int = 60) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 2] = 255
    return mask


def test_regions_are_cropped_and_resized_like_the_before_photo(photos: Path, tmp_path: Path) -> None:
    regions = tmp_path / "regions"
    save(regions / "nose" / "p1.png", left_half())
    save(regions / "eyes" / "P2.png", left_half(40, 30))  # half the resolution, other letter case
    out = tmp_path / "out"
    report = prepare_dataset(photos, out, options(regions=regions))
    assert report.total == 2
    nose = np.asarray(Image.open(out / "train" / "regions" / "nose" / "p1.png"))
    eyes = np.asarray(Image.open(out / "train" / "regions" / "eyes" / "p2.png"))
    # Columns 10-40 of 10-70 are inside: the left half of the 30 px square.
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[:, : SIZE // 2] = 255
    for region in (nose, eyes):
        assert region.shape == (SIZE, SIZE) and set(np.unique(region).tolist()) <= {0, 255}
        assert np.mean(region != expected) < 0.05
    # Missing regions are simply absent.
    assert not (out / "train" / "regions" / "eyes" / "p1.png").exists()
    assert not (out / "train" / "regions" / "nose" / "p2.png").exists()
    assert report.summary["regions"] == {"eyes": 1, "nose": 1}

    # A region removed from the folder is removed from OUT on the next run; the rest is kept.
    (regions / "eyes" / "P2.png").unlink()
    again = prepare_dataset(photos, out, options(regions=regions))
    assert again.written == 1 and again.kept == 1
    assert not (out / "train" / "regions" / "eyes" / "p2.png").exists()
    assert (out / "train" / "regions" / "nose" / "p1.png").is_file()
    assert {r.id for r in read_manifest(out)} == {"p1", "p2"}


def test_regions_follow_their_pair_into_the_test_split(photos: Path, tmp_path: Path) -> None:
    regions = tmp_path / "regions"
    for name in ("p1", "p2"):
        save(regions / "jaw" / f"{name}.png", left_half())
    out = tmp_path / "out"
    prepare_dataset(photos, out, options(regions=regions))
    prepare_dataset(photos, out, options(regions=regions, test_fraction=0.5))
    for record in read_manifest(out):
        other = "train" if record.split == "test" else "test"
        assert (out / record.split / "regions" / "jaw" / f"{record.id}.png").is_file()
        assert not (out / other / "regions" / "jaw" / f"{record.id}.png").exists()


def test_a_regions_folder_must_be_well_formed_and_outside_out(photos: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "Nose Job").mkdir(parents=True)
    with pytest.raises(SvaiError, match="--regions .*Nose Job"):
        index_regions(bad)
    twice = tmp_path / "twice"
    save(twice / "nose" / "a.png", left_half())
    save(twice / "nose" / "a.bmp", left_half())
    with pytest.raises(SvaiError, match="both the nose region"):
        index_regions(twice)
    out = tmp_path / "out"
    with pytest.raises(SvaiError, match="inside OUT"):
        prepare_dataset(photos, out, options(regions=out / "regions"))
    result = CliRunner().invoke(app, ["prepare", "synthetic", str(tmp_path / "s"), "--regions", str(bad)])
    assert result.exit_code == 2 and "synthetic data draws its own" in result.stderr


def test_reading_and_fitting_a_region(tmp_path: Path) -> None:
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    assert read_region(save(tmp_path / "r.png", grey)).tolist() == [[False, False, True, True]]
    assert fit_region(np.ones((3, 5), bool), 6, 10).all()
    with pytest.raises(SvaiError, match="cannot read"):
        (tmp_path / "broken.png").write_bytes(b"not a png")
        read_region(tmp_path / "broken.png")
