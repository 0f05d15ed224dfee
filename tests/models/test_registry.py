"""The same checks for every registered model: shapes, a training step, no NaN, save/load."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from svai.checkpoint import TrainingState, load_networks, save_checkpoint
from svai.run import resolve
from svai.models.base import Request
from svai.models.registry import families, list_models, make_family, parameter_counts, presets, resolve_model
from svai.train import Trainer
from tests.support.diffusion_fixtures import diffusion_registry_base, tiny_hf_cache, use_tiny_base  # noqa: F401  (sd-lora models: a tiny base, autouse)

SIZE = 32
COMPUTE = {"no": torch.float32, "bf16": torch.bfloat16}


def batch(size: int = SIZE, n: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    def image() -> torch.Tensor:
        return torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    return {"before": image(), "after": image(), "after_unpaired": image(),
            "mask": torch.ones(n, 1, size, size), "procedures": torch.tensor([[1.0, 0.0, 1.0]] * n)}


def request_for(family, data: dict[str, torch.Tensor]) -> Request:
    return Request(procedures=data["procedures"]).only(family.uses)


@pytest.fixture(params=list_models())
def model(request: pytest.FixtureRequest):
    torch.manual_seed(0)
    config = resolve(request.param, sets=[f"data.image_size={SIZE}"])
    family = make_family(config)
    return request.param, family, family.build()


def test_every_preset_names_a_registered_family() -> None:
    for name, preset in presets().items():
        assert preset["family"] in families(), name
        assert resolve_model(name)[0].name == preset["family"]


def test_translate_keeps_shape_and_range(model) -> None:
    _, family, nets = model
    data = batch()
    out = family.translate(nets, data["before"], request_for(family, data))
    assert out.shape == data["before"].shape
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1


def tiny_sets(name: str) -> list[str]:
    """Narrow networks where the family has width options, so every model steps quickly."""
    fields = {f.name for f in dataclasses.fields(resolve_model(name)[0].Options)}
    return [f"model.{key}=8" for key in ("ngf", "ndf") if key in fields]


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("name", list_models())
def test_real_loop_steps_train_every_phase_without_nan(
        name: str, precision: str, tiny_dataset: Path, tmp_path: Path, use_vgg_weights: Path) -> None:
    """Two steps through `Trainer._step` (autocast, backward, optimiser steps, after_step);
    pretrained frozen networks load from the test-made files and stay as they were."""
    torch.manual_seed(0)
    config = resolve(name, sets=[f"data.image_size={SIZE}", "train.batch_size=2", "train.sample_every=0",
                                 "train.steps=2", f"train.mixed_precision={precision}", *tiny_sets(name)],
                     flags={"data.root": str(tiny_dataset)})
    trainer = Trainer(config, tmp_path / "run")
    # A family whose training is a closed-form fit has no phase: the fit left finite figures.
    assert trainer.phases or trainer.fit_logs
    assert all(math.isfinite(v) for v in trainer.fit_logs.values()), trainer.fit_logs
    loader = iter(trainer._loader())
    for step in range(2):
        batch = next(loader)
        due = [phase for phase in trainer.phases if step % phase.every == 0]
        snapshots = {n: [p.detach().clone() for p in trainer.nets[n].parameters()]
                     for phase in due for n in phase.networks}
        logs = trainer._step(batch, step)
        assert (logs or not due) and all(math.isfinite(v) for v in logs.values()), logs
        for phase in due:
            moved = [n for n in phase.networks if any(
                not torch.equal(a, p.detach()) for a, p in zip(snapshots[n], trainer.nets[n].parameters()))]
            assert moved, f"phase {phase.name} trained nothing at step {step}"
        assert all(torch.isfinite(p).all() for net in trainer.nets.values() for p in net.parameters())
    for network, net in trainer.nets.items():
        for key, value in net.state_dict().items():
            if trainer.family.is_frozen(network, key):
                assert not value.is_floating_point() or value.dtype == COMPUTE[precision], (network, key)


def test_safetensors_round_trip(model, tmp_path: Path) -> None:
    name, family, nets = model
    optimizers = {p.name: torch.optim.Adam([q for n in p.networks for q in nets[n].parameters()], lr=p.lr)
                  for p in family.phases()}
    path = save_checkpoint(tmp_path, TrainingState(1, nets, optimizers, frozen=family.is_frozen))
    torch.manual_seed(123)
    fresh = make_family(resolve(name, sets=[f"data.image_size={SIZE}"])).build()
    load_networks(path, fresh, frozen=family.is_frozen)
    # Frozen entries are pretrained: the weights lookup restores them, not the checkpoint.
    for key, net in nets.items():
        state = net.state_dict()
        fresh[key].load_state_dict({k: v for k, v in state.items() if family.is_frozen(key, k)}, strict=False)
    for key in nets:
        a, b = nets[key].state_dict(), fresh[key].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    data = batch()
    for net in (*nets.values(), *fresh.values()):
        net.eval()
    torch.testing.assert_close(family.translate(nets, data["before"], request_for(family, data)),
                               family.translate(fresh, data["before"], request_for(family, data)))


def test_parameter_counts_on_meta_equal_real_build(model) -> None:
    _, family, nets = model
    counts = parameter_counts(family)
    for name, count in counts.items():
        assert count == sum(p.numel() for p in nets[name].parameters()), name


def output_families() -> list[str]:
    """Every family whose generator takes `model.output`."""
    return [name for name, cls in families().items()
            if "output" in {f.name for f in dataclasses.fields(cls.Options)}]


@pytest.mark.parametrize("mode", ["residual", "masked", "warp"])
@pytest.mark.parametrize("name", output_families())
def test_changes_apply_at_the_photos_own_size(name: str, mode: str) -> None:
    """Every family with output modes applies its change to a photo at the photo's size: an
    untrained model returns a photo twice its size bit for bit, and at the model's size
    `translate_at` is `translate`."""
    torch.manual_seed(0)
    family = make_family(resolve(name, sets=[f"data.image_size={SIZE}", f"model.output={mode}", *tiny_sets(name)]))
    assert family.changes_at_size()
    nets = family.build()
    for net in nets.values():
        net.eval()
    data = batch()
    request = request_for(family, data)
    photos = [torch.rand(1, 3, 2 * SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(2)]
    small = torch.cat([torch.nn.functional.interpolate(p, size=(SIZE, SIZE), mode="bilinear", antialias=True)
                       for p in photos])
    for photo, out in zip(photos, family.translate_at(nets, small, request, photos)):
        assert torch.equal(out, photo)
    with torch.no_grad():
        for parameter in nets[family.inference_networks()[-1]].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    same = family.translate_at(nets, data["before"], request, [data["before"][i:i + 1] for i in range(2)])
    torch.testing.assert_close(torch.cat(same), family.translate(nets, data["before"], request).float(), rtol=0, atol=0)


def loaded(name: str):  # type: ignore[no-untyped-def]
    """An untrained model of `name` at SIZE as `svai generate` holds one (eval mode, CPU)."""
    from svai.generate import LoadedModel

    torch.manual_seed(0)
    config = resolve(name, sets=[f"data.image_size={SIZE}", *tiny_sets(name)])
    family = make_family(config)
    nets = family.build()
    for net in nets.values():
        net.eval()
    return LoadedModel(config, family, nets, 0, torch.device("cpu"))


def photo(seed: int, height: int = 45, width: int = 37) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", [n for n in list_models() if "intensity" in make_family(
    resolve(n, sets=[f"data.image_size={SIZE}"])).uses])
def test_intensity_zero_returns_the_photo_byte_for_byte(name: str) -> None:
    """Every model that takes --intensity gives back a photo of any size unchanged at 0."""
    from svai.generate import translate_batch

    model = loaded(name)
    uses = model.family.uses
    request = Request(procedures=torch.tensor([[0.0, 1.0, 0.0]]) if "procedures" in uses else None, intensity=0.0)
    images = [photo(1), photo(2, 32, 32)]
    for image, out in zip(images, translate_batch(model, images, request, landmarks=[None, None])):
        assert out.dtype == image.dtype and np.array_equal(out, image)


@pytest.mark.parametrize("name", [n for n in list_models() if "procedures" in make_family(
    resolve(n, sets=[f"data.image_size={SIZE}"])).uses])
def test_procedures_change_nothing_outside_their_regions(name: str) -> None:
    """Every model that takes --procedures keeps its change inside the ticked procedures'
    regions, at the photo's own size: untrained networks redraw everything, so whatever is
    left outside the nose region came from the confinement."""
    from svai.face import mesh
    from svai.generate import translate_batch
    from tests.support.datasets import fake_face

    model = loaded(name)
    image = photo(3, 96, 80)
    points = fake_face(np.random.default_rng(0), 80) + [0, 8]
    request = Request(procedures=torch.tensor([[0.0, 1.0, 0.0]]))
    out = translate_batch(model, [image], request, landmarks=[points])[0]
    outside = mesh.region_mask(points, "nose", 80, 96) == 0
    assert np.array_equal(out[outside], image[outside])
