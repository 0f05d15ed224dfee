"""Library-level generation: requests per batch, labels from a dataset's manifest, references."""

from __future__ import annotations

from pathlib import Path

import torch

from svai.data.layout import PROCEDURES, read_manifest
from svai.generate import InputFolder, batch_request, reference_for
from svai.models.base import Request


def dataset_procedures(input_dir: Path) -> dict[str, torch.Tensor] | None:
    """Each image's labelled strengths over the default vocabulary when `input_dir` is a
    dataset split, as generation reads them; None for any other folder."""
    folder = InputFolder.open(input_dir)
    if folder.split is None:
        return None
    return {image_id: folder.strengths(image_id, PROCEDURES) for image_id in folder.records}


def test_dataset_splits_give_each_image_its_manifest_labels(tiny_dataset: Path, tmp_path: Path) -> None:
    labels = dataset_procedures(tiny_dataset / "test" / "before")
    records = [r for r in read_manifest(tiny_dataset) if r.split == "test"]
    assert set(labels) == {r.id for r in records}
    for record in records:
        expected = [float(p in record.procedures) for p in PROCEDURES]
        assert labels[record.id].tolist() == expected
    assert dataset_procedures(tmp_path) is None
    assert dataset_procedures(tiny_dataset) is None


def test_one_row_of_strengths_applies_to_every_image() -> None:
    asked = batch_request(Request(procedures=torch.tensor([0.0, 0.5, 1.0]), intensity=0.3), 4, torch.device("cpu"))
    assert asked.procedures.shape == (4, 3) and asked.procedures[3].tolist() == [0.0, 0.5, 1.0]
    assert asked.intensity == 0.3
    per_image = torch.rand(4, 3)
    assert torch.equal(batch_request(Request(procedures=per_image), 4, torch.device("cpu")).procedures, per_image)


def test_references_match_by_name_then_in_turn() -> None:
    refs = [Path("r/a.png"), Path("r/b.png"), Path("r/c.png")]
    assert reference_for(refs, 0, Path("in/b.jpg")) == Path("r/b.png")
    assert [reference_for(refs, i, Path(f"in/x{i}.jpg")) for i in range(4)] == [refs[0], refs[1], refs[2], refs[0]]


def test_requests_keep_only_what_a_family_reads() -> None:
    request = Request(procedures=torch.ones(1, 3), intensity=0.5, prompt="x")
    assert request.given() == ["procedures", "intensity", "prompt"]
    assert request.only({"intensity"}).given() == ["intensity"]


def test_procedures_parse_with_strengths_over_the_run_vocabulary() -> None:
    from svai.errors import SvaiError
    from svai.generate import parse_procedures

    vocabulary = ("eyes", "nose", "jaw", "lips")
    assert parse_procedures("nose:0.5,lips", vocabulary).tolist() == [0.0, 0.5, 0.0, 1.0]
    assert parse_procedures(None) is None
    import pytest

    with pytest.raises(SvaiError, match="--procedures: unknown procedure 'ears': use eyes, nose, jaw, lips"):
        parse_procedures("ears", vocabulary)
    with pytest.raises(SvaiError, match=r"strength must be in \[0, 1\]"):
        parse_procedures("nose:2", vocabulary)


def test_photos_larger_than_the_model_keep_their_own_pixels_where_nothing_changes() -> None:
    """An untrained warp model (zero field) returns a non-square photo 4× its size byte for byte:
    the change is applied to the photo itself, not to a copy resized to the model and back."""
    import numpy as np

    from svai.run import resolve
    from svai.generate import LoadedModel, translate_batch
    from svai.models.registry import make_family

    torch.manual_seed(0)
    config = resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8", "model.output=warp"])
    family = make_family(config)
    nets = family.build()
    model = LoadedModel(config, family, {"G": nets["G"]}, 0, torch.device("cpu"))
    photo = np.random.default_rng(0).integers(0, 256, size=(128, 100, 3), dtype=np.uint8)
    assert np.array_equal(translate_batch(model, [photo])[0], photo)
    # A field that is no longer zero moves pixels of the full-size photo.
    with torch.no_grad():
        nets["G"].output_layer.bias.fill_(0.5)
    moved = translate_batch(model, [photo])[0]
    assert moved.shape == photo.shape and not np.array_equal(moved, photo)


def test_generation_checks_its_options_where_they_are_built() -> None:
    import pytest

    from svai.errors import SvaiError
    from svai.generate import Generation

    for batch_size in (0, 4097):
        with pytest.raises(SvaiError, match=f"--batch-size must be between 1 and 4096; got {batch_size}"):
            Generation(batch_size=batch_size)
    with pytest.raises(SvaiError, match="--intensity must be between 0 and 1; got 1.5"):
        Generation(request=Request(intensity=1.5))
    with pytest.raises(SvaiError, match="--regions steers a composite: add --composite"):
        Generation(regions=Path("regions"))
    assert Generation().batch_size == 8


def test_an_input_folder_reads_its_manifest_once(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import svai.generate as generate

    reads = []
    real = generate.read_manifest
    monkeypatch.setattr(generate, "read_manifest", lambda root: reads.append(root) or real(root))
    folder = generate.InputFolder.open(tiny_dataset / "test" / "before")
    records = [r for r in real(tiny_dataset) if r.split == "test"]
    for record in records:
        assert folder.labelled(record.id) == record.procedures
        assert folder.strengths(record.id, PROCEDURES).tolist() == [float(p in record.procedures) for p in PROCEDURES]
    assert folder.split == (tiny_dataset.resolve(), "test") and len(reads) == 1
    assert folder.inputs() == {"--input": tiny_dataset / "test" / "before", "the dataset": tiny_dataset.resolve()}
    plain = generate.InputFolder.open(tmp_path)
    assert plain.split is None and plain.labelled("x") is None and plain.inputs() == {"--input": tmp_path}


def test_a_model_without_a_changing_head_adds_its_change_to_a_larger_photo() -> None:
    """A direct-output model's change (output minus input, at the model's size) is resized and
    added to the photo itself, so the photo keeps its own detail."""
    import numpy as np

    from svai.run import resolve
    from svai.generate import LoadedModel, translate_batch
    from svai.models.registry import make_family

    config = resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8"])
    family = make_family(config)
    assert not family.changes_at_size()
    family.translate = lambda nets, before, request=None: before + 0.1  # type: ignore[method-assign]
    model = LoadedModel(config, family, {"G": family.build()["G"]}, 0, torch.device("cpu"))
    photo = np.random.default_rng(0).integers(0, 200, size=(128, 100, 3), dtype=np.uint8)
    # 0.1 in [-1, 1] is 12.75 grey levels.
    assert np.array_equal(translate_batch(model, [photo])[0], photo + 13)
