"""Fixtures shared across the suite: tiny prepared datasets built in temporary folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from svai.data.layout import PROCEDURES, DatasetWriter, PairRecord


# The networks in tests are tiny: one thread is as fast as two for them, and it keeps a
# busy machine from thrashing between OpenMP threads.
torch.set_num_threads(1)


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
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")
