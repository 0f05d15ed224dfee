from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from svai.data.dataset import PairedImages, StepBatches


def test_resumed_order_equals_the_tail_of_the_full_order() -> None:
    full = list(StepBatches(10, 3, 0, 12, seed=4, unpaired=True))
    tail = list(StepBatches(10, 3, 5, 12, seed=4, unpaired=True))
    assert tail == full[5:]


def test_each_epoch_visits_every_item_once() -> None:
    batches = StepBatches(12, 4, 0, 6, seed=1)
    flat = [i for batch in batches for i, _ in batch]
    assert sorted(flat[:12]) == list(range(12)) and sorted(flat[12:]) == list(range(12))
    assert flat[:12] != flat[12:]  # a new permutation each epoch


def test_processes_split_the_global_batch() -> None:
    single = StepBatches(16, 4, 0, 3, seed=2, world_size=1)
    ranks = [StepBatches(16, 2, 0, 3, seed=2, rank=r, world_size=2) for r in range(2)]
    for step in range(3):
        assert single.batch(step) == ranks[0].batch(step) + ranks[1].batch(step)


def test_unpaired_stream_is_independent() -> None:
    pairs = [p for batch in StepBatches(50, 5, 0, 10, seed=0, unpaired=True) for p in batch]
    assert sum(i == j for i, j in pairs) < 10  # a shared stream would give 50


def test_items_have_the_documented_shapes_and_ranges(tiny_dataset: Path) -> None:
    data = PairedImages(tiny_dataset, "train", 32)
    item = data[(0, 1)]
    assert item["before"].shape == (3, 32, 32) and item["after_unpaired"].shape == (3, 32, 32)
    assert item["before"].min() >= -1 and item["before"].max() <= 1
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["procedures"].sum() == 1
    resized = PairedImages(tiny_dataset, "test", 16)[(0, -1)]
    assert resized["before"].shape == (3, 16, 16) and "after_unpaired" not in resized
    record_id = PairedImages(tiny_dataset, "test", 32).records[0].id
    raw = torch.from_numpy(np.asarray(Image.open(tiny_dataset / "test" / "before" / f"{record_id}.png")).copy())
    expected = torch.nn.functional.interpolate(raw.permute(2, 0, 1)[None].float(), size=(16, 16), mode="bilinear",
                                               antialias=True, align_corners=False).round()[0] / 127.5 - 1
    assert torch.allclose(resized["before"], expected, atol=1e-6)


def test_a_replaced_file_is_decoded_like_prepare_does(tmp_path: Path) -> None:
    from tests.support.datasets import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data")
    before = data / "train" / "before" / "p000.png"
    # A 16-bit grey photo at about 46 % brightness, and one of another aspect ratio.
    Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(before)
    assert Image.open(before).mode.startswith("I")
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, 16:48] = 200  # the centre square is bright, the sides dark
    Image.fromarray(wide).save(data / "train" / "after" / "p000.png")
    item = PairedImages(data, "train", 32, cache=False)[(0, -1)]
    grey = (item["before"] + 1) * 127.5
    assert torch.allclose(grey, torch.full_like(grey, round(30000 / 65535 * 255)), atol=0.6)
    after = (item["after"] + 1) * 127.5
    assert torch.allclose(after, torch.full_like(after, 200.0), atol=0.6)  # cut, not squashed
