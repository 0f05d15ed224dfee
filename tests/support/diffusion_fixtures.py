"""A tiny Stable-Diffusion-shaped base model, saved as a local diffusers folder, for tests
that must never touch the network.

The UNet, VAE and CLIP text encoder are randomly initialised from small configs of the same
classes Stable Diffusion uses; the CLIP tokenizer is built from a vocab.json and merges.txt
written here (letters, comma, the two special tokens, one merge). The folder is laid out as
the Hugging Face cache lays out a download of the default `model.base` repository, so the
family finds it through the same offline lookup as the real weights.

Fixtures:
    tiny_hf_cache (session): a hub cache folder holding the tiny model as a snapshot of
        `svai.weights.BASE_MODELS["sd15"].repo`; returns the cache folder.
    use_tiny_base (function): points $HF_HUB_CACHE at it, sets $HF_HUB_OFFLINE=1 and keeps
        the svai weights folders empty; returns the base folder (the snapshot).
    diffusion_registry_base (function, autouse where imported): `use_tiny_base` for the
        parametrised tests whose model is an sd-lora one; skips them without the extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from svai import weights

LETTERS = "abcdefghijklmnopqrstuvwxyz,"
TOKEN_LENGTH = 16
SNAPSHOT = "0" * 40

TINY_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [16, 32], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 16,
    "attention_head_dim": 4, "norm_num_groups": 8,
}
# Three blocks: latents are a quarter of the image side (Stable Diffusion's VAE: an eighth).
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "block_out_channels": [8, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "norm_num_groups": 4, "sample_size": 32,
}
# Stable Diffusion 1.5's scheduler config (a PNDM config the family reads as DDPM / DDIM).
SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False, "prediction_type": "epsilon",
}
VAE_FACTOR = 4


def tiny_vocabulary() -> dict[str, int]:
    """CLIP's byte-level BPE vocabulary in miniature: specials, letters, word-final letters, one merge."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in LETTERS:
            vocab[char + suffix] = len(vocab)
    vocab["no"] = len(vocab)
    return vocab


def write_tokenizer(folder: Path) -> int:
    """vocab.json, merges.txt and tokenizer_config.json of a tiny CLIP tokenizer; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nn o\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": TOKEN_LENGTH,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(vocab)


def write_tiny_base(folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny Stable-Diffusion-shaped model as a diffusers folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = write_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UNet2DConditionModel(**TINY_UNET).save_pretrained(folder / "unet")
        AutoencoderKL(**TINY_VAE).save_pretrained(folder / "vae")
        text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=TOKEN_LENGTH, projection_dim=16,
                              bos_token_id=0, eos_token_id=1, pad_token_id=1)
        CLIPTextModel(text).save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER), encoding="utf-8")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


def snapshot_folder(cache: Path, repo: str = weights.BASE_MODELS["sd15"].repo) -> Path:
    """Where the hub cache keeps the `main` snapshot of `repo`."""
    return cache / f"models--{repo.replace('/', '--')}" / "snapshots" / SNAPSHOT


@pytest.fixture(scope="session")
def tiny_hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    cache = tmp_path_factory.mktemp("hf_cache")
    snapshot = snapshot_folder(cache)
    write_tiny_base(snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text(SNAPSHOT, encoding="utf-8")
    return cache


@pytest.fixture
def use_tiny_base(tiny_hf_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tiny_hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    return snapshot_folder(tiny_hf_cache)


def _is_diffusion_model(value: object) -> bool:
    from svai.models.registry import list_models, resolve_model

    return isinstance(value, str) and value in list_models() and resolve_model(value)[0].name == "sd-lora"


@pytest.fixture(autouse=True)
def diffusion_registry_base(request: pytest.FixtureRequest) -> None:
    """For a test parametrised over model names: an sd-lora model gets the tiny base (or is
    skipped without the extra); other models are left alone."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or not any(_is_diffusion_model(v) for v in callspec.params.values()):
        return
    request.getfixturevalue("use_tiny_base")
