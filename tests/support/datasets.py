"""Tiny prepared datasets and fake face landmarks for the tests that need data on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svai.data.layout import PROCEDURES, DatasetWriter, PairRecord


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field (H, W, 3) uint8: natural-looking enough for tiny models."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3))
    grid = np.linspace(0, 3, size)
    x0 = np.floor(grid).astype(int).clip(0, 2)
    t = grid - x0
    rows = coarse[x0] * (1 - t)[:, None, None] + coarse[x0 + 1] * t[:, None, None]
    image = rows[:, x0] * (1 - t)[None, :, None] + rows[:, x0 + 1] * t[None, :, None]
    return image.clip(0, 255).astype(np.uint8)


def write_tiny_dataset(root: Path, size: int = 32, train: int = 8, test: int = 4, seed: int = 0) -> Path:
    """A prepared dataset whose "after" is a brightened, masked change of "before"."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root)
    for index in range(train + test):
        before = smooth_image(rng, size)
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: size // 2, size // 4: 3 * size // 4] = 255
        after = before.copy()
        after[mask > 0] = np.clip(after[mask > 0].astype(int) + 40, 0, 255).astype(np.uint8)
        split = "train" if index < train else "test"
        record = PairRecord(id=f"p{index:03d}", split=split, subject=f"s{index:03d}",
                            procedures=(PROCEDURES[index % 3],))
        writer.add(record, before, after, mask)
    writer.close({"source": "test fixture", "size": size})
    write_fake_landmarks(root, size, seed)
    return root


# Where each procedure region's points gather in a fake face (fractions of the image side),
# hull by hull as `svai.face.mesh.REGION_SHAPES` lists them.
_FAKE_CENTRES = {"eyes": [(0.38, 0.42), (0.62, 0.42)], "nose": [(0.5, 0.52)], "lips": [(0.5, 0.62)],
                 "brows": [(0.38, 0.36), (0.62, 0.36)], "chin": [(0.5, 0.7)]}


def fake_face(rng: np.random.Generator, size: int) -> np.ndarray:
    """478 points laid out roughly like a face in a `size` px image: each procedure region's
    points gathered around its place (the jaw's along the lower face), the rest spread over the
    middle, the outer eye corners (33 and 263) level and a third of the image apart.
    Landmarks for the code that reads them, not for the eye."""
    from svai.face import mesh

    points = rng.uniform(0.3, 0.7, size=(478, 2))
    for procedure, centres in _FAKE_CENTRES.items():
        for hull, centre in zip(mesh.REGION_SHAPES[procedure].hulls, centres):
            points[list(hull)] = np.asarray(centre) + rng.uniform(-0.03, 0.03, size=(len(hull), 2))
    jaw = list(mesh.REGION_SHAPES["jaw"].hulls[0])
    angles = np.linspace(0.15 * np.pi, 0.85 * np.pi, len(jaw))
    points[jaw] = np.stack([0.5 + 0.22 * np.cos(angles), 0.5 + 0.25 * np.sin(angles)], 1)
    points[33], points[263] = (0.33, 0.42), (0.67, 0.42)
    return points * size


def write_fake_landmarks(root: Path, size: int, seed: int) -> None:
    """Each pair's `landmarks.npz` rows (`svai.face.store`): a fake face before, and after it
    the points of a procedure-dependent third of the mesh moved by half a pixel."""
    from svai.data.layout import read_manifest
    from svai.face.store import SplitLandmarks, write_landmarks

    rng = np.random.default_rng(seed + 1)
    splits: dict[str, SplitLandmarks] = {}
    for record in read_manifest(root):
        before = fake_face(rng, size)
        after = before.copy()
        moved = np.arange(478) % 3 == PROCEDURES.index(record.procedures[0])
        after[moved, 0] += 0.5
        splits.setdefault(record.split, SplitLandmarks()).rows[record.id] = (before, after)
    for split, rows in splits.items():
        write_landmarks(root, split, rows)
