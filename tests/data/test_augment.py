"""Paired augmentation: shared geometry and colour, determinism, identity when off."""

from __future__ import annotations

import pytest
import torch

from svai.data.augment import AugmentOptions, augment_batch

EVERYTHING = AugmentOptions(hflip=0.5, rotate_p=1.0, rotate_degrees=25, scale_p=1.0, scale_range=(0.8, 1.2),
                            translate=0.1, color_p=1.0, brightness=0.2, contrast=0.3)
GEOMETRY = AugmentOptions(hflip=0.5, rotate_p=1.0, rotate_degrees=25, scale_p=1.0, scale_range=(0.8, 1.2),
                          translate=0.1)


def square_batch(size: int = 32, batch: int = 4) -> dict[str, torch.Tensor]:
    """Before = a bright off-centre square on dark (plus noise); mask = that square."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 6:18, 4:14] = 1.0
    before = (mask * 2 - 1).repeat(1, 3, 1, 1) * 0.8 + 0.1 * torch.rand(batch, 3, size, size, generator=generator)
    return {"id": [str(i) for i in range(batch)], "before": before, "after": before.clone(), "mask": mask,
            "procedures": torch.ones(batch, 3)}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_off_is_the_identity() -> None:
    batch = square_batch()
    out = augment_batch(batch, AugmentOptions(), seeded(0))
    for key in ("before", "after", "mask"):
        assert torch.equal(out[key], batch[key])
    assert out["id"] == batch["id"]


def test_identical_geometry_and_colour_for_before_and_after() -> None:
    batch = square_batch()
    out = augment_batch(batch, EVERYTHING, seeded(1))
    assert torch.equal(out["before"], out["after"])
    assert not torch.allclose(out["before"], batch["before"])  # something did happen
    assert out["before"].min() >= -1 and out["before"].max() <= 1


def test_mask_moves_with_the_image() -> None:
    batch = square_batch()
    out = augment_batch(batch, GEOMETRY, seeded(2))
    bright = out["before"].mean(dim=1, keepdim=True) > 0
    inside = out["mask"] > 0.5
    assert (bright == inside).float().mean() > 0.97
    assert not torch.equal(inside, batch["mask"] > 0.5)  # the square did move
    assert out["mask"].min() >= 0 and out["mask"].max() <= 1


def test_hflip_is_an_exact_mirror() -> None:
    batch = square_batch()
    out = augment_batch(batch, AugmentOptions(hflip=1.0), seeded(3))
    torch.testing.assert_close(out["before"], torch.flip(batch["before"], dims=[-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["mask"], torch.flip(batch["mask"], dims=[-1]), atol=1e-5, rtol=0)


def test_brightness_and_contrast_follow_their_ranges() -> None:
    batch = square_batch()
    flat = {"before": torch.zeros(64, 3, 8, 8), "after": torch.zeros(64, 3, 8, 8)}  # grey 0.5 in [0, 1]
    bright = augment_batch(flat, AugmentOptions(color_p=1.0, brightness=0.2, contrast=0.0), seeded(4))["before"]
    shift = (bright + 1) / 2 - 0.5
    assert shift.abs().max() <= 0.2 + 1e-6 and shift.std() > 0.05
    assert torch.equal(augment_batch(batch, AugmentOptions(color_p=1.0), seeded(4))["mask"], batch["mask"])


def test_deterministic_for_a_seeded_generator() -> None:
    batch = square_batch()
    first = augment_batch(batch, EVERYTHING, seeded(5))
    second = augment_batch(batch, EVERYTHING, seeded(5))
    other = augment_batch(batch, EVERYTHING, seeded(6))
    assert torch.equal(first["before"], second["before"]) and torch.equal(first["mask"], second["mask"])
    assert not torch.equal(first["before"], other["before"])


def test_unpaired_after_gets_its_own_draw() -> None:
    batch = square_batch()
    batch["after_unpaired"] = batch["before"].clone()
    out = augment_batch(batch, GEOMETRY, seeded(7))
    assert not torch.equal(out["after_unpaired"], out["before"])
    # Adding after_unpaired does not change the paired draw.
    plain = augment_batch(square_batch(), GEOMETRY, seeded(7))
    assert torch.equal(plain["before"], out["before"])


def test_probability_zero_and_one_per_sample() -> None:
    batch = square_batch(batch=16)
    out = augment_batch(batch, AugmentOptions(hflip=0.5), seeded(8))
    mirrored = [torch.allclose(out["before"][i], torch.flip(batch["before"][i], dims=[-1]), atol=1e-5)
                for i in range(16)]
    unchanged = [torch.equal(out["before"][i], batch["before"][i]) for i in range(16)]
    assert all(m != u for m, u in zip(mirrored, unchanged))
    assert 0 < sum(mirrored) < 16


@pytest.mark.parametrize("bad", [{"hflip": 1.5}, {"scale_range": (1.2, 0.8)}, {"contrast": 1.0}, {"translate": -1}])
def test_bad_options_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        AugmentOptions(**bad)


def test_landmarks_move_with_the_image_and_a_mirror_drops_them() -> None:
    """A landmark at the centre of a bright dot stays at the dot's centre after rotation, zoom
    and shift; a mirrored face's landmarks become NaN (its eyes would swap names)."""
    size = 48
    batch = square_batch(size, batch=3)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dot = torch.exp(-((xx - 20.0) ** 2 + (yy - 26.0) ** 2) / (2 * 1.5 ** 2))
    batch["before"] = (dot * 2 - 1).expand(3, 3, size, size).clone()
    batch["after"] = batch["before"].clone()
    batch["landmarks"] = torch.tensor([[20.0, 26.0]]).expand(3, 478, 2).clone()
    out = augment_batch(batch, AugmentOptions(rotate_p=1.0, rotate_degrees=25, scale_p=1.0, translate=0.1), seeded(5))
    for image, points in zip(out["before"], out["landmarks"]):
        weight = (image[0] + 1).clamp(min=0)
        centre = torch.stack([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()
        assert torch.dist(centre, points[0]) < 0.3, (centre, points[0])
    assert not torch.equal(out["landmarks"], batch["landmarks"])
    mirrored = augment_batch(batch, AugmentOptions(hflip=1.0), seeded(6))
    assert torch.isnan(mirrored["landmarks"]).all()
