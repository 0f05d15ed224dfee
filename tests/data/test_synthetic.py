"""The built-in synthetic faces: determinism, exact ground truth, labels, subjects and the written layout."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svai.data import synthetic
from svai.data.layout import PROCEDURES, read_manifest
from svai.data.synthetic import SyntheticPair, generate_pairs, write_synthetic_dataset
from svai.errors import SvaiError


@pytest.fixture(scope="module")
def pairs64() -> list[SyntheticPair]:
    return list(generate_pairs(40, 64, seed=11))


def _same(a: SyntheticPair, b: SyntheticPair) -> bool:
    return (
        (a.id, a.subject, a.procedures) == (b.id, b.subject, b.procedures)
        and np.array_equal(a.before, b.before)
        and np.array_equal(a.after, b.after)
        and np.array_equal(a.mask, b.mask)
    )


def test_same_seed_gives_identical_pairs_and_a_larger_count_extends_a_smaller_one() -> None:
    short = list(generate_pairs(3, 48, seed=7))
    again = list(generate_pairs(3, 48, seed=7))
    longer = list(generate_pairs(6, 48, seed=7))
    assert all(_same(a, b) for a, b in zip(short, again))
    assert all(_same(a, b) for a, b in zip(short, longer[:3]))
    other = next(generate_pairs(1, 48, seed=8))
    assert not np.array_equal(other.before, short[0].before)


@pytest.mark.parametrize("size", [32, 512])
def test_extreme_sizes_give_the_documented_shapes_and_types(size: int) -> None:
    pair = next(generate_pairs(1, size, seed=0))
    assert pair.before.shape == pair.after.shape == (size, size, 3)
    assert pair.mask.shape == (size, size)
    assert pair.before.dtype == pair.after.dtype == pair.mask.dtype == np.uint8
    assert set(np.unique(pair.mask).tolist()) <= {0, 255}
    # A face, not a flat fill: plenty of distinct colours.
    assert len(np.unique(pair.before.reshape(-1, 3), axis=0)) > size


def test_ids_subjects_and_procedure_labels_are_well_formed(pairs64: list[SyntheticPair]) -> None:
    assert [p.id for p in pairs64] == [f"syn-{i:06d}" for i in range(len(pairs64))]
    for pair in pairs64:
        assert pair.subject.startswith("s") and pair.subject[1:].isdigit()
        assert 1 <= len(pair.procedures) <= 3
        assert list(pair.procedures) == [p for p in PROCEDURES if p in pair.procedures]
        assert len(pair.intensities) == len(pair.procedures)
        assert all(0.0 < k <= 1.0 for k in pair.intensities)
    assert {len(p.procedures) for p in pairs64} == {1, 2, 3}
    assert {name for p in pairs64 for name in p.procedures} == set(PROCEDURES)


def test_outside_the_mask_before_and_after_are_identical(pairs64: list[SyntheticPair]) -> None:
    for pair in pairs64:
        outside = pair.mask == 0
        assert np.array_equal(pair.before[outside], pair.after[outside]), pair.id


def test_mask_covers_every_changed_pixel_and_little_else(pairs64: list[SyntheticPair]) -> None:
    for pair in pairs64:
        changed = np.any(pair.before != pair.after, axis=2)
        assert changed.any(), f"{pair.id}: {pair.procedures} changed nothing"
        assert np.all(pair.mask[changed] == 255), pair.id
        # At 64 px the mask grows by one pixel in each of 4 directions, so it can hold at most
        # 5 pixels per changed pixel.
        assert np.count_nonzero(pair.mask) <= 5 * np.count_nonzero(changed), pair.id


def _rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask)
    size = mask.shape[0]
    return rows / size, cols / size


def test_each_procedure_changes_its_own_region(pairs64: list[SyntheticPair]) -> None:
    seen = set()
    for pair in pairs64:
        if len(pair.procedures) != 1:
            continue
        (name,) = pair.procedures
        seen.add(name)
        rows, cols = _rows_cols(pair.mask)
        if name == "eyes":
            # Two separate eyes in the upper face, one each side of the midline.
            assert rows.min() > 0.3 and rows.max() < 0.6, pair.id
            assert (cols < 0.45).any() and (cols > 0.55).any(), pair.id
        elif name == "nose":
            # A central band between the eyes and the mouth.
            assert cols.min() > 0.3 and cols.max() < 0.7, pair.id
            assert rows.min() > 0.35 and rows.max() < 0.75, pair.id
        else:
            # Lower face only, on both sides.
            assert rows.min() > 0.45, pair.id
            assert (cols < 0.4).any() and (cols > 0.6).any(), pair.id
    assert seen == set(PROCEDURES)


def test_resumed_after_image_equals_a_full_drawing_of_the_operated_face() -> None:
    # The after image restarts from a copy of the before canvas; it must match drawing the
    # changed face from scratch, for every procedure.
    rng = np.random.default_rng(3)
    face = synthetic.sample_face(rng)
    frame = synthetic._make_frame(synthetic.sample_photo(rng), 48)
    for procedures in [("eyes",), ("nose",), ("jaw",), PROCEDURES]:
        intensities = (1.0,) * len(procedures)
        before, after = synthetic.render_pair(frame, face, procedures, intensities)
        assert np.array_equal(before, synthetic.render_face(frame, face))
        operated = synthetic.apply_procedures(face, procedures, intensities)
        assert np.array_equal(after, synthetic.render_face(frame, operated)), procedures


def test_skin_tones_span_very_light_to_very_dark() -> None:
    skins = np.array([synthetic.sample_face(np.random.default_rng([0, i])).skin for i in range(200)])
    luminance = skins @ np.array([0.2126, 0.7152, 0.0722])
    assert luminance.max() > 0.8
    assert luminance.min() < 0.25


def test_subjects_have_several_photos_that_differ() -> None:
    pairs = list(generate_pairs(60, 32, seed=2))
    photos = Counter(p.subject for p in pairs)
    assert len(photos) < len(pairs)
    assert sum(n >= 2 for n in photos.values()) >= 5
    # Photos of one subject are consecutive and never the same picture.
    for first, second in zip(pairs, pairs[1:]):
        if first.subject == second.subject:
            assert not np.array_equal(first.before, second.before)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_written_dataset_splits_by_subject_and_records_exact_hashes(tmp_path: Path) -> None:
    calls: list[int] = []
    summary = write_synthetic_dataset(tmp_path, count=30, size=32, seed=4, test_fraction=0.3,
                                      progress=calls.append)
    assert calls == list(range(1, 31))
    records = read_manifest(tmp_path)
    assert len(records) == 30
    assert summary["pairs"]["train"] + summary["pairs"]["test"] == 30
    assert summary["pairs"]["test"] > 0 and summary["pairs"]["train"] > 0
    assert summary["settings"] == {"source": "synthetic", "count": 30, "size": 32, "seed": 4,
                                   "test_fraction": 0.3}
    assert json.loads((tmp_path / "prepare.json").read_text())["pairs"] == summary["pairs"]

    sides: dict[str, set[str]] = {}
    for record in records:
        sides.setdefault(record.subject, set()).add(record.split)
        folder = tmp_path / record.split
        assert record.sha256_before == _sha256(folder / "before" / f"{record.id}.png")
        assert record.sha256_after == _sha256(folder / "after" / f"{record.id}.png")
        assert record.sha256_mask == _sha256(folder / "masks" / f"{record.id}.png")
        assert record.source_before.startswith(f"synthetic:seed=4:index={int(record.id[4:])}")
        assert 1 <= len(record.procedures) <= 3
    assert all(len(splits) == 1 for splits in sides.values())

    # The files hold what generate_pairs draws.
    first = next(generate_pairs(1, 32, seed=4))
    (record,) = [r for r in records if r.id == first.id]
    stored = np.asarray(Image.open(tmp_path / record.split / "after" / f"{first.id}.png"))
    assert np.array_equal(stored, first.after)
    assert record.procedures == first.procedures


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"count": 0, "size": 64}, "--count"),
        ({"count": 2, "size": 31}, "--size"),
        ({"count": 2, "size": 513}, "--size"),
        ({"count": 2, "size": 64.0}, "--size"),
        ({"count": 2, "size": 64, "seed": -1}, "--seed"),
        ({"count": 2, "size": 64, "test_fraction": 1.0}, "--test-fraction"),
    ],
)
def test_bad_options_are_user_errors_naming_the_option(tmp_path: Path, options: dict, flag: str) -> None:
    options = {"seed": 0, **options}
    with pytest.raises(SvaiError, match=flag):
        write_synthetic_dataset(tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
    if "test_fraction" not in options:
        with pytest.raises(SvaiError, match=flag):
            generate_pairs(options["count"], options["size"], options["seed"])


def test_regions_depend_only_on_the_face_before_the_procedures(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = list(generate_pairs(12, 48, seed=5))
    # The same faces and photos with other procedures at other intensities: new after images
    # and masks, the same regions.
    def every_procedure_at_full_strength(rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[float, ...]]:
        return PROCEDURES, (1.0,) * len(PROCEDURES)

    monkeypatch.setattr(synthetic, "sample_procedures", every_procedure_at_full_strength)
    redrawn = list(generate_pairs(12, 48, seed=5))
    assert any(not np.array_equal(a.after, b.after) for a, b in zip(drawn, redrawn))
    for a, b in zip(drawn, redrawn):
        assert np.array_equal(a.before, b.before)
        assert sorted(a.regions) == sorted(b.regions) == sorted(PROCEDURES)
        for name in PROCEDURES:
            assert np.array_equal(a.regions[name], b.regions[name]), (a.id, name)


def test_regions_are_computed_from_the_face_and_photo_alone() -> None:
    rng = np.random.default_rng(8)
    face = synthetic.sample_face(rng)
    photo = synthetic.sample_photo(rng)
    regions = synthetic.procedure_regions(photo, face, 64)
    frame = synthetic._make_frame(photo, 64)
    for procedures in [("eyes",), ("nose",), ("jaw",), PROCEDURES]:
        for k in (0.4, 1.0):
            before, after = synthetic.render_pair(frame, face, procedures, (k,) * len(procedures))
            changed = np.any(before != after, axis=2)
            union = np.any([regions[p] > 0 for p in procedures], axis=0)
            assert changed.any() and not (changed & ~union).any(), (procedures, k)
    for region in regions.values():
        assert region.shape == (64, 64) and region.dtype == np.uint8
        assert set(np.unique(region).tolist()) == {0, 255}


def test_the_change_mask_lies_inside_the_performed_procedures_regions(pairs64: list[SyntheticPair]) -> None:
    outside = total = 0
    for pair in pairs64:
        assert sorted(pair.regions) == sorted(PROCEDURES)  # done or not
        union = np.any([pair.regions[p] > 0 for p in pair.procedures], axis=0)
        changed = np.any(pair.before != pair.after, axis=2)
        assert not (changed & ~union).any(), pair.id
        mask = pair.mask > 0
        outside += np.count_nonzero(mask & ~union)
        total += np.count_nonzero(mask)
        # Regions are local: each procedure's is a small part of the photo.
        for name in PROCEDURES:
            assert 0.005 < np.count_nonzero(pair.regions[name]) / mask.size < 0.25, (pair.id, name)
    # Measured 0 of 53,642 mask pixels outside over 300 pairs at 64 px (and at 32-512 px).
    assert outside <= 0.001 * total


def test_written_dataset_holds_every_procedures_region(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, count=4, size=32, seed=6)
    pairs = {p.id: p for p in generate_pairs(4, 32, seed=6)}
    for record in read_manifest(tmp_path):
        for name in PROCEDURES:
            path = tmp_path / record.split / "regions" / name / f"{record.id}.png"
            stored = np.asarray(Image.open(path))
            assert np.array_equal(stored, pairs[record.id].regions[name]), path
