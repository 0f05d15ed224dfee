"""sd-lora and sd-lora-concat on a tiny randomly initialised Stable-Diffusion-shaped base
(tests/support/diffusion_fixtures.py), offline: the base lookup, what trains and what checkpoints
hold, the two conditioning modes, guidance, sampler settings, generation, and the package
working without the `diffusion` extra."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from svai import weights  # noqa: E402
from svai.checkpoint import find_checkpoint  # noqa: E402
from svai.cli import app  # noqa: E402
from svai.composite import CompositeOptions  # noqa: E402
from svai.run import resolve  # noqa: E402
from svai.errors import SvaiError  # noqa: E402
from svai.generate import Generation, generate_folder, load_model  # noqa: E402
from svai.models import diffusion  # noqa: E402
from svai.models.base import Request, StepContext  # noqa: E402
from svai.models.registry import make_family, parameter_counts  # noqa: E402
from svai.train import Trainer, train  # noqa: E402
from tests.support.diffusion_fixtures import (  # noqa: E402,F401  (fixtures)
    VAE_FACTOR, snapshot_folder, tiny_hf_cache, use_tiny_base, write_tokenizer,
)

SIZE = 32
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_config(model: str, data: Path, steps: int, *extra: str):
    return resolve(model, sets=[f"data.image_size={SIZE}", "train.batch_size=2", "train.sample_every=0",
                                f"train.steps={steps}", "train.log_every=1", *extra],
                   flags={"data.root": str(data)})


def family_of(model: str, *extra: str):
    return make_family(resolve(model, sets=[f"data.image_size={SIZE}", *extra]))


def images(count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def trained_keys(network: str, net: torch.nn.Module, family) -> set[str]:
    return {f"{network}.{k}" for k in net.state_dict() if not family.is_frozen(network, k)}


# -- the base lookup (svai.weights) ---------------------------------------------------------


def test_base_lookup_order_and_offline_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              tiny_hf_cache: Path) -> None:
    repo = weights.BASE_MODELS["sd15"].repo
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    assert weights.locate_base(repo) is None
    with pytest.raises(SvaiError) as caught:
        weights.require_base(repo, tmp_path / "mine")
    message = str(caught.value)
    assert "\n" not in message
    assert f"hf download {repo} --local-dir {tmp_path / 'mine' / 'stable-diffusion-v1-5'}" in message
    assert "model.base=" in message
    # No svai folder set: the hub cache, or a folder for $SVAI_WEIGHTS_DIR.
    with pytest.raises(SvaiError) as caught:
        weights.require_base(repo)
    assert f"`hf download {repo}` on a machine with internet" in str(caught.value)
    assert "--local-dir $SVAI_WEIGHTS_DIR/stable-diffusion-v1-5" in str(caught.value)

    # The hub cache (what `hf download` without --local-dir fills), then svai's folders first.
    monkeypatch.setenv("HF_HUB_CACHE", str(tiny_hf_cache))
    assert weights.locate_base(repo) == snapshot_folder(tiny_hf_cache)
    mine = tmp_path / "mine" / "stable-diffusion-v1-5"
    mine.parent.mkdir()
    mine.symlink_to(snapshot_folder(tiny_hf_cache), target_is_directory=True)
    assert weights.locate_base(repo, tmp_path / "mine") == mine
    # A folder path is taken as it is; a folder missing parts is refused, naming them.
    assert weights.locate_base(str(mine)) == mine
    partial = tmp_path / "partial"
    write_tokenizer(partial / "tokenizer")
    assert weights.locate_base(str(partial)) is None
    with pytest.raises(SvaiError, match=r"lacks unet/config\.json, vae/config\.json"):
        weights.require_base(str(partial))
    with pytest.raises(SvaiError, match="no such folder"):
        weights.require_base(str(tmp_path / "nowhere" / "deeper" / "sd"))


def test_svai_weights_lists_the_base(use_tiny_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["weights", "--no-verify"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ sd15"))
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in row and "present" in row
    assert f"sd15: {use_tiny_base}" in result.output


# -- building and counting --------------------------------------------------------------------


def lora_parameters(block_channels: list[int], transformer_blocks: list[int], text_dim: int, rank: int) -> int:
    """LoRA parameters on to_q, to_k, to_v, to_out.0 of every transformer block, in closed
    form: a rank-r adapter on a d_in -> d_out projection has r·(d_in + d_out) parameters.
    Per block of width C: self-attention 4 · r·2C; cross-attention q, out r·2C each and
    k, v r·(D + C) each, D the text width."""
    per_block = [8 * rank * c + 2 * rank * 2 * c + 2 * rank * (text_dim + c) for c in block_channels]
    return sum(n * p for n, p in zip(transformer_blocks, per_block))


def test_svai_models_counts_stable_diffusion_15_without_its_weights(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the base folder, counts come from SD 1.5's architecture held in code: the
    published sizes (UNet 859,520,964; VAE 83,653,863; CLIP ViT-L/14 text 123,060,480) plus
    the adapters."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Transformer blocks per width: 2 in each of the three down levels, 1 in the middle, 3
    # in each of the three up levels: 320 ×5, 640 ×5, 1280 ×6.
    lora = lora_parameters([320, 640, 1280], [5, 5, 6], 768, 4)
    assert lora == 797_184
    counts = parameter_counts(family_of("sd-lora"))
    assert counts == {"unet": 859_520_964 + lora, "vae": 83_653_863, "text_encoder": 123_060_480}
    concat = parameter_counts(family_of("sd-lora-concat"))
    # The widened input's delta: a 3×3 conv from 4 + 4 latent channels to 320, with bias.
    assert concat["unet"] == counts["unet"] + 320 * 8 * 9 + 320
    # A real build without the base folder is the one-line fix, not a random SD 1.5.
    with pytest.raises(SvaiError, match="hf download"):
        family_of("sd-lora").build()


def test_only_lora_and_the_widened_input_train(use_tiny_base: Path) -> None:
    plain, concat = family_of("sd-lora"), family_of("sd-lora-concat")
    a, b = plain.build(), concat.build()
    # Tiny UNet: one transformer block in its cross-attention down level (width 16), one in
    # the middle (32), two in its cross-attention up level (16): 16 ×3, 32 ×1.
    lora = lora_parameters([16, 32], [3, 1], 16, 4)
    trainable = {n: p for n, p in a["unet"].named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable) and sum(p.numel() for p in trainable.values()) == lora
    assert not any(p.requires_grad for net in ("vae", "text_encoder") for p in a[net].parameters())
    trainable = {n for n, p in b["unet"].named_parameters() if p.requires_grad}
    assert {n for n in trainable if ".lora_" not in n} == {"conv_in.delta.weight", "conv_in.delta.bias"}
    assert torch.count_nonzero(b["unet"].conv_in.delta.weight) == 0
    # Checkpoint entries: exactly the trainable parameters.
    for family, nets in ((plain, a), (concat, b)):
        kept = trained_keys("unet", nets["unet"], family)
        assert kept == {f"unet.{n}" for n, p in nets["unet"].named_parameters() if p.requires_grad}
        assert not trained_keys("vae", nets["vae"], family) and not trained_keys("text_encoder", nets["text_encoder"], family)


def test_lora_targets_are_configurable_and_checked(use_tiny_base: Path) -> None:
    nets = family_of("sd-lora", "model.lora_targets=[to_q]", "model.lora_rank=2").build()
    trainable = sum(p.numel() for p in nets["unet"].parameters() if p.requires_grad)
    # to_q only, rank 2: r·2C per attention, two attentions per transformer block.
    assert trainable == sum(n * 2 * (2 * 2 * c) for c, n in ((16, 3), (32, 1)))
    with pytest.raises(SvaiError, match=r"model\.lora_targets"):
        family_of("sd-lora", "model.lora_targets=[no_such_layer]").build()


def test_load_pretrained_fills_frozen_parts_and_keeps_trained_ones_in_float32(use_tiny_base: Path) -> None:
    """Frozen entries come from the base folder in the compute dtype; LoRA and the widened
    input keep their values and float32 (fp16 trainables fail GradScaler.unscale_)."""
    from diffusers import UNet2DConditionModel

    family = family_of("sd-lora-concat")
    nets = family.build()
    with torch.no_grad():
        for name, p in nets["unet"].named_parameters():
            if p.requires_grad:
                p.add_(0.5)
    trained = {n: p.detach().clone() for n, p in nets["unet"].named_parameters() if p.requires_grad}
    family.load_pretrained(nets, torch.float16)
    base = UNet2DConditionModel.from_pretrained(str(use_tiny_base), subfolder="unet").state_dict()
    for key, value in nets["unet"].state_dict().items():
        if family.is_frozen("unet", key):
            assert value.dtype == torch.float16
            assert torch.equal(value, base[key.replace(".base_layer", "")].half()), key
        else:
            assert value.dtype == torch.float32 and torch.equal(value, trained[key]), key
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in nets["vae"].parameters())


def test_networks_built_on_meta_load_like_the_base(use_tiny_base: Path) -> None:
    """Generation builds on meta and materialises empty tensors: the base then restores every
    frozen tensor, the text encoder's non-persistent position ids included."""
    from transformers import CLIPTextModel

    family = family_of("sd-lora")
    with torch.device("meta"):
        skeleton = family.build()
    nets = {name: net.to_empty(device="cpu") for name, net in skeleton.items()}
    family.load_pretrained(nets)
    reference = CLIPTextModel.from_pretrained(str(use_tiny_base / "text_encoder")).eval()
    ids = torch.tensor([[0, 5, 40, 7, 1, 1]])
    torch.testing.assert_close(nets["text_encoder"].eval()(ids)[0], reference(ids)[0], rtol=0, atol=0)


# -- what the UNet sees --------------------------------------------------------------------------


def unet_inputs(unet: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Record the sample and text embeddings of every UNet call."""
    calls: list[dict[str, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({"sample": args[0].detach().clone(), "text": kwargs["encoder_hidden_states"].detach().clone()})
    unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_the_two_conditioning_modes_feed_the_unet_differently(use_tiny_base: Path) -> None:
    before, after = images(2, 0), images(2, 1)
    procedures = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    batch = {"before": before, "after": after, "procedures": procedures}
    seen = {}
    for model in ("sd-lora", "sd-lora-concat"):
        family = family_of(model, "model.condition_dropout=0")
        nets = family.build()
        family.load_pretrained(nets)
        calls = unet_inputs(nets["unet"])
        torch.manual_seed(0)
        family.loss("unet", nets, batch, StepContext(), 0)
        texts = family._encode_text(nets["text_encoder"], family._prompts(None, procedures, 2), before.device)
        before_latent = family._latents(nets["vae"], before)
        seen[model] = (calls[0], texts, before_latent)
    img2img, concat = seen["sd-lora"][0], seen["sd-lora-concat"][0]
    assert img2img["sample"].shape == (2, 4, SIZE // VAE_FACTOR, SIZE // VAE_FACTOR)
    assert concat["sample"].shape == (2, 8, SIZE // VAE_FACTOR, SIZE // VAE_FACTOR)
    # concat: the second half of the input channels is the before photo's latent.
    torch.testing.assert_close(concat["sample"][:, 4:], seen["sd-lora-concat"][2])
    # The text: the research's prompt for every pair, against each pair's procedure names.
    assert family_of("sd-lora")._prompts(None, procedures, 2) == [diffusion.RESEARCH_PROMPT] * 2
    assert family_of("sd-lora-concat")._prompts(None, procedures, 2) == ["nose, jaw", "eyes"]
    torch.testing.assert_close(img2img["text"], seen["sd-lora"][1])
    torch.testing.assert_close(concat["text"], seen["sd-lora-concat"][1])
    assert not torch.allclose(img2img["text"], concat["text"])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(use_tiny_base: Path) -> None:
    batch = {"before": images(2, 0), "after": images(2, 1), "procedures": torch.eye(3)[:2]}
    results = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        family = family_of("sd-lora-concat", f"model.gradient_checkpointing={flag}")
        nets = family.build()
        family.load_pretrained(nets)
        torch.manual_seed(1)
        loss, _ = family.loss("unet", nets, batch, StepContext(), 0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in nets["unet"].named_parameters() if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and all(g is not None for g in grads_b.values())
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def test_prompt_and_procedure_text() -> None:
    family = family_of("sd-lora-concat", "model.prompt=portrait")
    labels = torch.tensor([[1.0, 0.0, 0.5]])
    assert family._prompts(None, labels, 1) == ["portrait, eyes, jaw"]
    assert family._prompts("rhinoplasty, slimmer jaw", None, 2) == ["rhinoplasty, slimmer jaw"] * 2
    assert family._prompts("", torch.zeros(1, 3), 1) == [""]
    assert "procedures" in family.uses and "procedures" not in family_of("sd-lora").uses


def test_condition_dropout_follows_instructpix2pix() -> None:
    """u < p: text dropped; p <= u < 2p: both; 2p <= u < 3p: photo only; else neither."""
    family = family_of("sd-lora-concat", "model.condition_dropout=0.25")
    family._encode_text = lambda encoder, prompts, device: torch.zeros(1, 2, 3)
    torch.manual_seed(0)
    drawn = torch.rand(64)
    regions = (drawn / 0.25).floor().clamp(max=3)
    assert set(regions.tolist()) == {0.0, 1.0, 2.0, 3.0}
    torch.manual_seed(0)
    text, photo = family._drop_conditions(None, torch.ones(64, 2, 3), torch.ones(64, 4, 2, 2))
    torch.testing.assert_close(text[:, 0, 0], (regions >= 2).float())
    torch.testing.assert_close(photo[:, 0, 0, 0], ((regions == 0) | (regions == 3)).float())


# -- guidance and sampler settings ------------------------------------------------------------------


class BranchProbe(torch.nn.Module):
    """A stand-in UNet whose prediction is text[:, 0, 0] + 10 · mean of the photo channels."""

    def forward(self, sample: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        photo = sample[:, 4:].mean(dim=(1, 2, 3)) if sample.shape[1] > 4 else torch.zeros(sample.shape[0])
        value = encoder_hidden_states[:, 0, 0] + 10 * photo
        return (value.view(-1, 1, 1, 1).expand(-1, 4, *sample.shape[2:]),)


def test_guidance_matches_the_closed_forms() -> None:
    latents = torch.zeros(1, 4, 2, 2)
    cond, empty, photo = torch.full((1, 1, 1), 3.0), torch.full((1, 1, 1), 1.0), torch.full((1, 4, 2, 2), 0.5)
    probe = BranchProbe()
    # Prompt only: ε(∅) + s(ε(c) − ε(∅)) = 1 + 7.5 · 2.
    plain = diffusion.Guidance(cond, empty, None, 7.5, 1.0).noise(probe, latents, torch.tensor(1))
    assert torch.allclose(plain, torch.full_like(plain, 16.0))
    # Photo and text: ε(∅,∅)=1, ε(c_I,∅)=6, ε(c_I,c_T)=8 -> 1 + 1.5·5 + 7.5·2 = 23.5.
    both = diffusion.Guidance(cond, empty, photo, 7.5, 1.5).noise(probe, latents, torch.tensor(1))
    assert torch.allclose(both, torch.full_like(both, 23.5))
    # Photo scale 1: ε(c_I,∅) + s_T (ε(c_I,c_T) − ε(c_I,∅)) = 6 + 7.5 · 2.
    text_only = diffusion.Guidance(cond, empty, photo, 7.5, 1.0).noise(probe, latents, torch.tensor(1))
    assert torch.allclose(text_only, torch.full_like(text_only, 21.0))
    unguided = diffusion.Guidance(cond, None, photo, 1.0, 1.0).noise(probe, latents, torch.tensor(1))
    assert torch.allclose(unguided, torch.full_like(unguided, 8.0))
    # Empty prompts (cond is the empty prompt, 1): ε(∅,∅)=1, ε(c_I,∅)=6 -> 1 + 1.5·5, two branches.
    calls = unet_inputs(probe)
    empty_text = diffusion.Guidance(empty, None, photo, 7.5, 1.5).noise(probe, latents, torch.tensor(1))
    assert torch.allclose(empty_text, torch.full_like(empty_text, 8.5)) and calls[0]["sample"].shape[0] == 2


def test_strength_steps_and_intensity(use_tiny_base: Path) -> None:
    family = family_of("sd-lora")
    nets = family.build()
    family.load_pretrained(nets)
    calls = unet_inputs(nets["unet"])
    before = images(1)
    # strength × steps denoising steps (SDEdit), guidance 1 = one UNet pass each.
    family.translate(nets, before, Request(steps=10, strength=0.5, guidance=1.0))
    assert len(calls) == 5 and calls[0]["sample"].shape[0] == 1
    calls.clear()
    family.translate(nets, before, Request(steps=10, strength=0.6, intensity=0.5, guidance=3.0))
    assert len(calls) == 3 and calls[0]["sample"].shape[0] == 2  # guided: conditional + empty prompt
    calls.clear()
    assert torch.equal(family.translate(nets, before, Request(intensity=0.0)), before)
    assert not calls
    for request, option in ((Request(strength=1.5), "--strength"), (Request(steps=0), "--steps"),
                            (Request(guidance=-1.0), "--guidance"), (Request(intensity=2.0), "--intensity")):
        with pytest.raises(SvaiError, match=option):
            family.translate(nets, before, request)
    # The same seed gives the same image; no generator means seed 0.
    a = family.translate(nets, before, Request(steps=4, generator=torch.Generator().manual_seed(0)))
    b = family.translate(nets, before, Request(steps=4))
    torch.testing.assert_close(a, b)


# -- training, checkpoints, generation --------------------------------------------------------


@pytest.mark.parametrize("model", ["sd-lora", "sd-lora-concat"])
def test_training_moves_only_the_trained_parameters_and_generation_reloads_them(
        model: str, use_tiny_base: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(run_config(model, tiny_dataset, 3), tmp_path / "probe")
    start = {n: {k: v.clone() for k, v in net.state_dict().items()} for n, net in trainer.nets.items()}
    trainer.close()
    result = train(run_config(model, tiny_dataset, 3), tmp_path / "run")
    assert result.step == 3
    saved = load_file(str(find_checkpoint(tmp_path / "run").path / "weights.safetensors"))
    family = make_family(run_config(model, tiny_dataset, 3))
    expected = set().union(*(trained_keys(n, net, family) for n, net in trainer.nets.items()))
    assert set(saved) == expected and all(v.dtype == torch.float32 for v in saved.values())
    assert any(k.startswith("unet.conv_in.delta.") for k in saved) == (model == "sd-lora-concat")

    loaded = load_model(tmp_path / "run", device="cpu")
    for network, net in loaded.nets.items():
        for key, value in net.state_dict().items():
            if family.is_frozen(network, key):
                # Frozen: the base model's tensors, exactly as the run started with them.
                assert torch.equal(value, start[network][key]), (network, key)
            else:
                assert torch.equal(value, saved[f"{network}.{key}"])
    moved = [k for k in saved if not torch.equal(saved[k], start["unet"][k.removeprefix("unet.")])]
    # Every LoRA B (zero at the start) moved after three steps, and the A matrices too.
    assert all(k in moved for k in saved if ".lora_B." in k) and any(".lora_A." in k for k in moved)
    if model == "sd-lora-concat":
        assert "unet.conv_in.delta.weight" in moved

    # Generation: any input size comes back at that size, with and without a composite.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(inputs / "wide.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(inputs / "square.png")
    request = Request(steps=3, guidance=2.0, strength=0.7, prompt="nose",
                      generator=torch.Generator().manual_seed(1))
    report = generate_folder(loaded, inputs, tmp_path / "out", Generation(2, request=request))
    assert {p.name: Image.open(p).size for p in report.written} == {"wide.png": (56, 40), "square.png": (32, 32)}
    composited = generate_folder(loaded, inputs, tmp_path / "comp",
                                 Generation(2, request=request, composite=CompositeOptions()))
    assert len(composited.written) == 2


def test_generate_cli_takes_the_sampler_options(use_tiny_base: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    train(run_config("sd-lora", tiny_dataset, 1), tmp_path / "run")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "--run", str(tmp_path / "run"), "--input",
                                      str(tiny_dataset / "test" / "before"), "--output", str(out),
                                      "--steps", "2", "--guidance", "1.5", "--strength", "0.5",
                                      "--prompt", "a portrait", "--seed", "3", "--intensity", "0.8"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == len(list((tiny_dataset / "test" / "before").iterdir()))
    refused = CliRunner().invoke(app, ["generate", "--run", str(tmp_path / "run"), "--input",
                                       str(tiny_dataset / "test" / "before"), "--output", str(tmp_path / "o2"),
                                       "--procedures", "nose"])
    assert refused.exit_code == 2 and "--procedures: sd-lora models do not use it" in refused.output


def test_missing_weights_fail_before_the_first_step(tmp_path: Path, tiny_dataset: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SvaiError, match="base model stable-diffusion-v1-5/stable-diffusion-v1-5 not found"):
        Trainer(run_config("sd-lora", tiny_dataset, 1), tmp_path / "run")
    assert not diffusion.base_available()


# -- without the extra -------------------------------------------------------------------------------


def test_svai_works_without_the_extra() -> None:
    """With diffusers, peft and transformers unimportable: the registry imports, `svai models`
    lists sd-lora without counts, and using it is the one-line install hint."""
    script = textwrap.dedent("""
        import json, sys
        for name in ("diffusers", "peft", "transformers"):
            sys.modules[name] = None
        from svai.run import resolve
        from svai.errors import SvaiError
        from svai.models.registry import list_models, make_family, parameter_counts
        family = make_family(resolve("sd-lora-concat"))
        result = {"listed": "sd-lora-concat" in list_models(), "counts": parameter_counts(family)}
        try:
            family.build()
        except SvaiError as error:
            result["build"] = str(error)
        try:
            family.inference_networks()
        except SvaiError as error:
            result["generate"] = str(error)
        print(json.dumps(result))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["listed"] and result["counts"] == {}
    hint = "the sd-lora models need diffusers, peft, transformers: pip install 'svai[diffusion]'"
    assert result["build"] == hint and result["generate"] == hint
