"""The same checks for every registered model: shapes, a training step, no NaN, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svai.checkpoint import load_networks, save_checkpoint
from svai.config import resolve
from svai.models.registry import families, list_models, presets, resolve_model
from svai.train import make_family, parameter_counts

SIZE = 32


def batch(size: int = SIZE, n: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    def image() -> torch.Tensor:
        return torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    return {"before": image(), "after": image(), "after_unpaired": image(),
            "mask": torch.ones(n, 1, size, size), "procedures": torch.tensor([[1.0, 0.0, 1.0]] * n)}


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
    out = family.translate(nets, data["before"], data["procedures"])
    assert out.shape == data["before"].shape
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1


def test_one_training_step_changes_weights_without_nan(model) -> None:
    _, family, nets = model
    data = batch()
    ctx: dict = {}
    for phase in family.phases():
        params = [p for name in phase.networks for p in nets[name].parameters()]
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.Adam(params, lr=phase.lr, betas=phase.betas)
        loss, logs = family.loss(phase.name, nets, data, ctx, 0)
        assert loss.ndim == 0 and torch.isfinite(loss), phase.name
        assert logs and all(isinstance(v, (float, int)) or torch.is_tensor(v) for v in logs.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, params))
        assert changed > 0, f"phase {phase.name} trained nothing"
        assert all(torch.isfinite(p).all() for p in params)


def test_safetensors_round_trip(model, tmp_path: Path) -> None:
    name, family, nets = model
    optimizers = {p.name: torch.optim.Adam([q for n in p.networks for q in nets[n].parameters()], lr=p.lr)
                  for p in family.phases()}
    path = save_checkpoint(tmp_path, 1, nets, optimizers)
    torch.manual_seed(123)
    fresh = make_family(resolve(name, sets=[f"data.image_size={SIZE}"])).build()
    load_networks(path, fresh)
    for key in nets:
        a, b = nets[key].state_dict(), fresh[key].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    data = batch()
    for net in (*nets.values(), *fresh.values()):
        net.eval()
    torch.testing.assert_close(family.translate(nets, data["before"], data["procedures"]),
                               family.translate(fresh, data["before"], data["procedures"]))


def test_parameter_counts_on_meta_equal_real_build(model) -> None:
    _, family, nets = model
    counts = parameter_counts(family)
    for name, count in counts.items():
        assert count == sum(p.numel() for p in nets[name].parameters()), name
