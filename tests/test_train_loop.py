"""The loop's hooks through `Trainer._step`: phases run every k steps, per-network learning
rates, shared optimisers, `after_step` on unwrapped networks, gradient penalties under bf16,
gradient accumulation and clipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svai.checkpoint import find_checkpoint
from svai.errors import SvaiError
from svai.models.base import Phase, check_phases
from svai.models.penalties import input_gradients, r1_penalty, wgan_gradient_penalty
from svai.run import resolve
from svai.train import Trainer, split_batch
from tests import toy_family
from tests.support.loop_helpers import first_batch
from tests.support.models import changed, snapshot

SIZE = 32


@pytest.fixture(autouse=True)
def toy() -> None:
    toy_family.register()
    yield
    toy_family.unregister()


def trainer(data: Path, run: Path, *sets: str) -> Trainer:
    config = resolve(toy_family.NAME, sets=[f"data.image_size={SIZE}", "train.sample_every=0", *sets],
                     flags={"data.root": str(data)})
    return Trainer(config, run)


def test_a_phase_runs_only_every_k_steps(tiny_dataset: Path, tmp_path: Path) -> None:
    t = trainer(tiny_dataset, tmp_path / "run")
    batch = first_batch(t)
    critic = snapshot(t.nets["B"])
    logs = t._step(batch, 1)  # 1 % 2: the critic rests
    assert "B" not in logs and "A" in logs
    assert not changed(t.nets["B"], critic)
    logs = t._step(batch, 2)
    assert "B" in logs and changed(t.nets["B"], critic)


def test_per_network_learning_rates_and_a_shared_optimiser(tiny_dataset: Path, tmp_path: Path) -> None:
    t = trainer(tiny_dataset, tmp_path / "run")
    assert sorted(t.optimizers) == ["A", "B"]  # A_again steps A's optimiser
    groups = t.optimizers["A"].param_groups
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    a, a2 = snapshot(t.nets["A"]), snapshot(t.nets["A2"])
    t._step(first_batch(t), 1)
    # Adam's first update of a parameter is lr·sign(gradient) up to ε: A2 moved by its own
    # rate. A was stepped twice by one optimiser (phases A and A_again).
    step_a2 = max(float((p.detach() - q).abs().max()) for p, q in zip(t.nets["A2"].parameters(), a2))
    assert step_a2 == pytest.approx(1e-3, rel=1e-3)
    assert changed(t.nets["A"], a)
    state = t.optimizers["A"].optimizer.state if hasattr(t.optimizers["A"], "optimizer") else t.optimizers["A"].state
    steps = {float(state[p]["step"]) for p in t.nets["A"].parameters()}
    assert steps == {2.0}


def test_after_step_updates_the_ema_from_the_networks_themselves(tiny_dataset: Path, tmp_path: Path) -> None:
    t = trainer(tiny_dataset, tmp_path / "run")
    ema = snapshot(t.nets["A_ema"])
    t._step(first_batch(t), 0)
    for old, new, live in zip(ema, t.nets["A_ema"].parameters(), t.nets["A"].parameters()):
        expected = toy_family.EMA_DECAY * old + (1 - toy_family.EMA_DECAY) * live.detach()
        torch.testing.assert_close(new, expected)
    # The EMA copy is state, not trained: no optimiser holds it.
    trained = {id(p) for opt in t.optimizers.values() for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in t.nets["A_ema"].parameters())


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_gradient_penalty_through_the_loop_matches_the_closed_form(
        tiny_dataset: Path, tmp_path: Path, precision: str) -> None:
    t = trainer(tiny_dataset, tmp_path / "run", f"train.mixed_precision={precision}")
    expected = toy_family.critic_penalty_closed_form(t.nets["B"], SIZE, SIZE)
    critic = snapshot(t.nets["B"])
    logs = t._step(first_batch(t), 0)
    assert logs["gp"] == pytest.approx(expected, rel=1e-5 if precision == "no" else 2e-2)
    assert changed(t.nets["B"], critic)


def test_penalties_against_hand_computed_cases() -> None:
    torch.manual_seed(0)
    critic = torch.nn.Conv2d(3, 1, 1)
    real, fake = torch.rand(4, 3, 5, 6), torch.rand(4, 3, 5, 6)
    gp = wgan_gradient_penalty(critic, real, fake)
    assert float(gp.detach()) == pytest.approx(toy_family.critic_penalty_closed_form(critic, 5, 6), rel=1e-5)
    # R1 of D(x) = Σ w·x²: ∇ = 2·w·x, so ½·E‖∇‖² = ½·mean over samples of Σ (2wx)².
    w = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    x = torch.rand(4, 3, 5, 6, requires_grad=True)
    scores = (w * x ** 2).flatten(1).sum(1)
    expected = 0.5 * ((2 * w * x.detach()) ** 2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1_penalty(scores, x), expected)


def test_input_gradients_are_the_same_through_a_grad_scaler() -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    net = torch.nn.Conv2d(3, 1, 3)
    plain = input_gradients(net(x), x)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    torch.testing.assert_close(input_gradients(net(x), x, scaler), plain)
    # the graph is kept: the penalty itself can be back-propagated into the critic
    plain.pow(2).sum().backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


def test_gradient_accumulation_equals_one_large_batch(tiny_dataset: Path, tmp_path: Path) -> None:
    results = []
    for name, sets in [("big", ["train.batch_size=4"]),
                       ("accumulated", ["train.batch_size=2", "train.grad_accumulation=2"])]:
        torch.manual_seed(0)
        t = trainer(tiny_dataset, tmp_path / name, *sets, "model.lambda_gp=0")
        t._step(first_batch(t), 0)
        results.append({k: [p.detach().clone() for p in t.nets[k].parameters()] for k in ("A", "A2", "B")})
    for key in results[0]:
        for a, b in zip(results[0][key], results[1][key]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_split_batch_keeps_every_item_once() -> None:
    batch = {"before": torch.arange(5).view(5, 1), "id": ["a", "b", "c", "d", "e"]}
    parts = split_batch(batch, 2)
    assert [p["id"] for p in parts] == [["a", "b"], ["c", "d", "e"]]
    assert torch.equal(torch.cat([p["before"] for p in parts]), batch["before"])


def test_gradient_clipping_bounds_the_norm(tiny_dataset: Path, tmp_path: Path) -> None:
    t = trainer(tiny_dataset, tmp_path / "run", "train.grad_clip=0.01")
    phase = t.phases[1]
    for name in phase.networks:
        for p in t.nets[name].parameters():
            p.grad = torch.full_like(p, 3.0)
    t._clip(phase, t.optimizers["A"])
    grads = [p.grad for name in phase.networks for p in t.nets[name].parameters()]
    assert float(torch.cat([g.flatten() for g in grads]).norm()) == pytest.approx(0.01, rel=1e-4)


def test_training_options_are_checked() -> None:
    with pytest.raises(SvaiError, match="train.grad_accumulation"):
        resolve(toy_family.NAME, sets=["train.grad_accumulation=0"])
    with pytest.raises(SvaiError, match="train.grad_clip"):
        resolve(toy_family.NAME, sets=["train.grad_clip=-1"])


def test_phase_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="not an earlier phase"):
        check_phases([Phase("A", ("A",), 1.0, shares="B"), Phase("B", ("B",), 1.0)])
    with pytest.raises(ValueError, match="outside the optimiser"):
        check_phases([Phase("A", ("A",), 1.0), Phase("B", ("B",), 1.0, shares="A")])


@pytest.mark.slow
def test_two_processes_with_a_gradient_penalty_and_ema(tiny_dataset: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): the penalty's double backward and the EMA run under DDP."""
    script = tmp_path / "run_toy.py"
    script.write_text(
        "import sys, toy_family\n"
        "from svai.run import resolve\n"
        "from svai.train import train\n"
        "toy_family.register()\n"
        f"config = resolve('{toy_family.NAME}', sets=['data.image_size={SIZE}', 'train.steps=3',"
        " 'train.sample_every=0', 'train.log_every=1', 'train.mixed_precision=bf16'],"
        f" flags={{'data.root': {str(tiny_dataset)!r}}})\n"
        "train(config, sys.argv[1])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", str(script), str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_file(str(find_checkpoint(run).path / "weights.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not torch.equal(weights["A_ema.weight"], weights["A.weight"])
    steps = (run / "log.jsonl").read_text().splitlines()
    assert len(steps) == 3 and '"gp"' in steps[0]
