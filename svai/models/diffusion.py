"""Stable Diffusion fine-tuned with LoRA on its UNet (Hu et al. 2022, "LoRA: Low-Rank
Adaptation of Large Language Models"; Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models").

One family, two ways of conditioning the UNet on the before photo (`model.conditioning`):

- "img2img" (preset `sd-lora`, the research's setup): the UNet learns to denoise latents of
  after photos under a fixed prompt; at generation the before photo's latent is noised to
  `strength` and denoised (SDEdit, Meng et al. 2022), so the prompt steers the change.
- "concat" (preset `sd-lora-concat`, InstructPix2Pix-style, Brooks et al. 2023): the before
  photo's latent is concatenated to the noisy latent on channels, the UNet's input layer
  widened with zero-initialised weights, so the model learns the before → after mapping
  itself; the text (prompt and/or the pair's procedure names) is optional.

Networks: ``unet`` (base weights frozen; LoRA on the attention projections trains, and in
"concat" the widened input layer too), ``vae`` and ``text_encoder`` (frozen). Checkpoints
hold only what trains; `load_pretrained` fills the rest from the base model, a diffusers
folder found offline by `svai.weights.locate_base`.

diffusers, peft and transformers are optional (`pip install 'svai[diffusion]'`): this module
imports them only inside functions, so the rest of svai works without them.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from svai import weights
from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Batch, LossResult, ModelFamily, Networks, Phase, Request, StepContext
from svai.models.options import check_at_least, check_in_unit_interval, check_positive
from svai.models.registry import register_family

RESEARCH_PROMPT = "A professional portrait of a person after surgery"
EXTRA_PACKAGES = ("diffusers", "peft", "transformers")
INSTALL_HINT = "pip install 'svai[diffusion]'"
# Sampler noise comes from this seed when the request brings no generator, so output repeats.
DEFAULT_SAMPLER_SEED = 0
# The adapter name peft gives LoRA weights (`…to_q.lora_A.default.weight`).
ADAPTER = "default"

# Stable Diffusion 1.5's architecture (its unet/, vae/ and text_encoder/ config.json), used to
# build the networks when the base folder is absent: on the meta device, for `svai models`.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "act_fn": "silu",
    "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "act_fn": "silu",
    "sample_size": 512, "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
}


def missing_packages() -> list[str]:
    """The packages of the `diffusion` extra that are not installed (found without importing)."""
    return [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]


def require_extra() -> None:
    """A one-line `SvaiError` saying how to install the extra, unless it is installed."""
    missing = missing_packages()
    if missing:
        raise SvaiError(f"the sd-lora models need {', '.join(missing)}: {INSTALL_HINT}")


def base_available(base: str = weights.BASE_MODELS["sd15"].repo) -> bool:
    """Whether these models can train here: the extra is installed and the base model's
    folder is found offline (what a benchmark asks before running a diffusion row)."""
    return not missing_packages() and weights.locate_base(base) is not None


@dataclass
class DiffusionOptions:
    """Options of `sd-lora`; each is a key under ``model:``. Defaults are the research's
    setup (LoRA rank 4, α 32 on the UNet attention projections) and diffusers' LoRA
    fine-tuning script (AdamW 1e-4, weight decay 1e-2, β = (0.9, 0.999)).

    - base: the base model, a local diffusers folder or a Hugging Face hub id, found offline
      (`svai.weights.locate_base`; `svai weights` lists it).
    - conditioning: "img2img" (prompt only; generation noises the before latent to
      `strength`) | "concat" (the before latent is concatenated to the UNet's input).
    - prompt: the text every pair trains with and generation uses unless --prompt is given;
      may be "" (then only the procedure names, if any, are the text).
    - procedure_text: append each pair's procedure names ("nose, jaw") to the prompt in
      training, and those of --procedures (strength > 0) at generation.
    - lora_rank, lora_alpha, lora_dropout: LoRA's rank r >= 1, scale α > 0 (the update is
      scaled by α / r) and dropout on its input, in [0, 1).
    - lora_targets: the UNet modules LoRA wraps, by name suffix (diffusers' attention
      projections: to_q, to_k, to_v, to_out.0).
    - lr, weight_decay: AdamW settings of the trained parameters.
    - condition_dropout: "concat" only; probability p of each of: text dropped, text and
      photo dropped, photo dropped (InstructPix2Pix's scheme, 3p in all), in [0, 1/3]. It
      teaches the unconditional predictions classifier-free guidance needs.
    - gradient_checkpointing: recompute UNet activations in the backward pass (less
      memory, about a third slower).
    - sampler_steps: DDIM steps over the whole schedule (--steps), >= 1.
    - guidance: classifier-free guidance scale on the text (--guidance), >= 0; 1 is off.
    - image_guidance: "concat" only; guidance scale on the photo, >= 0; 1 is off.
    - strength: how far generation noises the before latent (--strength), in [0, 1]: 1
      starts from pure noise, 0 returns the before photo; --intensity multiplies it.
    """

    base: str = weights.BASE_MODELS["sd15"].repo
    conditioning: Literal["img2img", "concat"] = "img2img"
    prompt: str = RESEARCH_PROMPT
    procedure_text: bool = False
    lora_rank: int = 4
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lr: float = 1e-4
    weight_decay: float = 1e-2
    condition_dropout: float = 0.05
    gradient_checkpointing: bool = False
    sampler_steps: int = 50
    guidance: float = 7.5
    image_guidance: float = 1.5
    strength: float = 0.8

    def __post_init__(self) -> None:
        if not self.base:
            raise SvaiError("model.base must name a diffusers folder or a hub id; got ''")
        check_at_least("lora_rank", self.lora_rank, 1)
        check_positive("lora_alpha", self.lora_alpha)
        check_in_unit_interval("lora_dropout", self.lora_dropout, closed=False)
        if not self.lora_targets:
            raise SvaiError("model.lora_targets must name at least one UNet module, e.g. [to_q, to_v]")
        check_positive("lr", self.lr)
        check_at_least("weight_decay", self.weight_decay, 0)
        if not 0 <= self.condition_dropout <= 1 / 3:
            raise SvaiError(f"model.condition_dropout must be in [0, 1/3]; got {self.condition_dropout!r}")
        check_at_least("sampler_steps", self.sampler_steps, 1)
        check_at_least("guidance", self.guidance, 0)
        check_at_least("image_guidance", self.image_guidance, 0)
        check_in_unit_interval("strength", self.strength, closed=True)


class WidenedInput(nn.Module):
    """A UNet's input convolution widened to take `extra` more channels (InstructPix2Pix).

    The pretrained convolution ``base_layer`` stays frozen; a trainable convolution
    ``delta`` over all channels, zero-initialised, is added to it. The sum is one
    convolution with weights [W + D₁, D₂] and bias b + d: exactly the widened layer with the
    new weights at zero, and training `delta` trains all of it. Keeping W apart lets the
    base model restore it at any time while checkpoints hold only `delta`.

    x: (B, C + extra, h, w) -> (B, C_out, h, w).
    """

    def __init__(self, base_layer: nn.Conv2d, extra: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = nn.Conv2d(base_layer.in_channels + extra, base_layer.out_channels,
                               base_layer.kernel_size, base_layer.stride, base_layer.padding)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x[:, : self.base_layer.in_channels])
        return out + self.delta(x.to(self.delta.weight.dtype)).to(out.dtype)


@dataclass(frozen=True)
class Architecture:
    """The configs of the three networks (their config.json contents)."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]


def read_architecture(folder: Path) -> Architecture:
    """The network configs of a diffusers folder (three small JSON files)."""
    parts = {}
    for part in ("unet", "vae", "text_encoder"):
        path = folder / part / "config.json"
        try:
            parts[part] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            raise SvaiError(f"{path}: cannot read the {part} config ({error})") from None
    return Architecture(**parts)


def _on_meta() -> bool:
    """Whether new tensors are created on the meta device (`svai models` counting)."""
    return torch.empty(0).device.type == "meta"


def _procedure_names(row: torch.Tensor, vocabulary: tuple[str, ...]) -> str:
    """(P,) strengths -> "nose, jaw": the names of the procedures with strength > 0."""
    return ", ".join(name for name, value in zip(vocabulary, row.tolist()) if value > 0)


def _fill_frozen(target: nn.Module, source: nn.Module, frozen: Callable[[str], bool], dtype: torch.dtype,
                 part: str) -> None:
    """Replace every parameter and buffer of `target` whose name `frozen(name)` accepts by the
    same-named tensor of `source` (LoRA's ``base_layer`` segments dropped), floating tensors
    cast to `dtype`, gradients off. Trainable entries are left as they are."""
    available = {**dict(source.named_parameters()), **dict(source.named_buffers())}
    entries = [*target.named_parameters(), *target.named_buffers()]
    for name, tensor in entries:
        if not frozen(name):
            continue
        value = available.get(name.replace(".base_layer", ""))
        if value is None or value.shape != tensor.shape:
            raise SvaiError(f"the base model's {part} does not match the run's network at {name}: "
                            f"was the run trained on another model.base?")
        value = value.detach().to(dtype) if value.is_floating_point() else value.detach().clone()
        owner_name, _, leaf = name.rpartition(".")
        owner = target.get_submodule(owner_name)
        if isinstance(tensor, nn.Parameter):
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value


@register_family
class StableDiffusionLora(ModelFamily):
    """Networks: ``unet`` (LoRA-adapted, partly frozen), ``vae`` and ``text_encoder`` (frozen).

    One phase, ``unet``: the standard noise-prediction loss (Ho et al. 2020, eq. 14; the
    velocity target when the base scheduler predicts v) at a uniformly drawn timestep of
    the base model's training schedule.
    """

    name = "sd-lora"
    Options = DiffusionOptions
    paired = True
    uses = frozenset({"intensity", "generator", "steps", "guidance", "strength", "prompt"})
    description = "Stable Diffusion 1.5 + LoRA on the UNet attention, img2img from the before photo under a prompt"
    frozen_networks = ("vae", "text_encoder")

    def __init__(self, options: DiffusionOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        if options.procedure_text:
            self.uses = self.uses | {"procedures"}
        self.concat = options.conditioning == "concat"
        # Loaded from the base folder on first use (the folder may be absent at `svai models`).
        self._cache: dict[str, Any] = {}

    # -- the base model ---------------------------------------------------------------------
    def _folder(self) -> Path:
        if "folder" not in self._cache:
            self._cache["folder"] = weights.require_base(self.options.base)
        return self._cache["folder"]

    def _architecture(self) -> Architecture:
        """The base folder's network configs; Stable Diffusion 1.5's held here when the folder
        is absent and networks are only being counted on the meta device."""
        folder = weights.locate_base(self.options.base)
        if folder is not None:
            return read_architecture(folder)
        if not _on_meta():
            weights.require_base(self.options.base)
        return Architecture(SD15_UNET, SD15_VAE, SD15_TEXT_ENCODER)

    def _tokenizer(self) -> Any:
        if "tokenizer" not in self._cache:
            from transformers import CLIPTokenizer

            self._cache["tokenizer"] = CLIPTokenizer.from_pretrained(
                str(self._folder() / "tokenizer"), local_files_only=True)
        return self._cache["tokenizer"]

    def _scheduler_config(self) -> dict[str, Any]:
        if "scheduler" not in self._cache:
            path = self._folder() / "scheduler" / "scheduler_config.json"
            self._cache["scheduler"] = json.loads(path.read_text(encoding="utf-8"))
        return self._cache["scheduler"]

    def _noise_scheduler(self) -> Any:
        """The base model's training schedule as a DDPM scheduler (stateless for add_noise)."""
        if "ddpm" not in self._cache:
            from diffusers import DDPMScheduler

            self._cache["ddpm"] = DDPMScheduler.from_config(self._scheduler_config())
        return self._cache["ddpm"]

    # -- building ---------------------------------------------------------------------------
    def build(self) -> Networks:
        """The three networks from the base folder's configs (no weights read; random init).

        Without the extra installed, on the meta device this returns no networks, so that
        `svai models` lists these models without counts; anywhere else it is the one-line
        install hint.
        """
        if missing_packages():
            if _on_meta():
                return {}
            require_extra()
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextConfig, CLIPTextModel

        o = self.options
        arch = self._architecture()
        unet = UNet2DConditionModel.from_config(arch.unet)
        vae = AutoencoderKL.from_config(arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in arch.text_encoder.items()
                                                       if not k.startswith("_")}))
        for net in (unet, vae, text_encoder):
            net.requires_grad_(False)
        if self.concat:
            unet.conv_in = WidenedInput(unet.conv_in, vae.config.latent_channels)
        lora = LoraConfig(r=o.lora_rank, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
                          target_modules=list(o.lora_targets), init_lora_weights=True)
        try:
            unet.add_adapter(lora, adapter_name=ADAPTER)
        except ValueError as error:
            raise SvaiError(f"model.lora_targets {list(o.lora_targets)}: {str(error).splitlines()[0]}") from None
        if self.concat:
            unet.conv_in.delta.requires_grad_(True)
        if o.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return {"unet": unet, "vae": vae, "text_encoder": text_encoder}

    def inference_networks(self) -> tuple[str, ...]:
        require_extra()
        return ("unet", "vae", "text_encoder")

    def is_frozen(self, network: str, key: str) -> bool:
        """Everything but LoRA's weights (and, with "concat", the input layer's `delta`)."""
        if network != "unet":
            return network in self.frozen_networks
        return ".lora_" not in f".{key}" and not key.startswith("conv_in.delta.")

    def load_pretrained(self, nets: Networks, dtype: torch.dtype = torch.float32) -> None:
        """Fill the frozen entries of `nets` from the base folder, cast to `dtype`; LoRA and
        the widened input's `delta` stay as they are (trained, float32)."""
        require_extra()
        folder = self._folder()
        for part in ("unet", "vae", "text_encoder"):
            if part in nets:
                source = _load_part(folder, part)
                _fill_frozen(nets[part], source, lambda key, part=part: self.is_frozen(part, key), dtype, part)

    # -- training ---------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        return [Phase("unet", ("unet",), o.lr, betas=(0.9, 0.999), weight_decay=o.weight_decay, optimizer="adamw")]

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: StepContext, step: int) -> LossResult:
        """Noise-prediction MSE. after (and before, for "concat"): (B, 3, H, W) in [-1, 1].

        The after photo's latent z₀ is noised to a uniformly drawn timestep t,
        z_t = √ᾱ_t z₀ + √(1 − ᾱ_t) ε, and the UNet predicts ε (or v) from z_t, the text and,
        with "concat", the before latent. Logs ``mse``.
        """
        if phase != "unet":
            raise ValueError(f"sd-lora has one phase, unet; got {phase!r}")
        unet, vae, text_encoder = nets["unet"], nets["vae"], nets["text_encoder"]
        scheduler = self._noise_scheduler()
        count = batch["after"].shape[0]
        with torch.no_grad():
            latents = self._latents(vae, batch["after"], sample=True)
            text = self._encode_text(text_encoder, self._prompts(None, batch["procedures"], count), latents.device)
            condition = self._latents(vae, batch["before"]) if self.concat else None
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if condition is not None:
            text, condition = self._drop_conditions(text_encoder, text, condition)
            noisy = torch.cat([noisy, condition], dim=1)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text, return_dict=False)[0]
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(prediction.float(), target.float())
        return loss, {"mse": loss.item()}

    def _drop_conditions(self, text_encoder: nn.Module, text: torch.Tensor,
                         condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InstructPix2Pix's conditioning dropout: with u ~ U(0, 1) per pair and p the rate,
        the text becomes the empty prompt's for u < 2p and the before latent zeros for
        p <= u < 3p (text only, both, photo only: p each). text: (B, L, D); condition: (B, 4, h, w)."""
        rate = self.options.condition_dropout
        if rate == 0:
            return text, condition
        u = torch.rand(text.shape[0], device=text.device)
        drop_text = (u < 2 * rate).view(-1, 1, 1)
        drop_image = ((u >= rate) & (u < 3 * rate)).view(-1, 1, 1, 1)
        with torch.no_grad():
            empty = self._encode_text(text_encoder, [""], text.device)
        text = torch.where(drop_text, empty.to(text.dtype), text)
        return text, torch.where(drop_image, torch.zeros_like(condition), condition)

    # -- shared pieces ----------------------------------------------------------------------
    def _latents(self, vae: nn.Module, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """images: (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/f, W/f) float32, f the
        VAE's downsampling; the posterior's mean, or a draw from it when `sample`."""
        dtype = next(vae.parameters()).dtype
        posterior = vae.encode(images.to(dtype)).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        return latents.float() * vae.config.scaling_factor

    def _encode_text(self, text_encoder: nn.Module, prompts: list[str], device: torch.device) -> torch.Tensor:
        """prompts (B strings) -> the text encoder's last hidden states (B, L, D), L the
        tokenizer's length (77 for Stable Diffusion), padded and truncated."""
        tokenizer = self._tokenizer()
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(device))[0]

    def _prompts(self, prompt: str | None, procedures: torch.Tensor | None, count: int) -> list[str]:
        """The text of each of `count` images: `prompt` (else `model.prompt`), followed by the
        names of its procedures when `model.procedure_text` is on. procedures: (count, P) or None."""
        text = self.options.prompt if prompt is None else prompt
        if not self.options.procedure_text or procedures is None:
            return [text] * count
        names = [_procedure_names(row, self.procedures) for row in procedures.expand(count, -1)]
        return [", ".join(part for part in (text, extra) if part) for extra in names]

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        """before: (B, 3, H, W) in [-1, 1], H and W multiples of the VAE's downsampling ->
        after, same shape, in [-1, 1].

        DDIM (η = 0) over the last strength × steps steps of the schedule, from the before
        latent noised to that level (strength 1: pure noise), with classifier-free guidance.
        Request: steps, guidance, strength (times intensity), prompt, procedures (with
        `procedure_text`), generator (default: seed 0, so output repeats).
        """
        if before.dim() != 4 or before.shape[1] != 3:
            raise SvaiError(f"expected before images (B, 3, H, W); got shape {tuple(before.shape)}")
        request = request or Request()
        steps, guidance, strength = self._sampler_settings(request)
        if strength == 0:
            return before.clone()
        from diffusers import DDIMScheduler

        unet, vae, text_encoder = nets["unet"], nets["vae"], nets["text_encoder"]
        count, device = before.shape[0], before.device
        procedures = self.requested_procedures(request, before) if request.procedures is not None else None
        prompts = self._prompts(request.prompt, procedures, count)
        scheduler = DDIMScheduler.from_config(self._scheduler_config())
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps[steps - min(steps, max(1, int(steps * strength))):]
        image = self._latents(vae, before)
        generator = request.generator or torch.Generator().manual_seed(DEFAULT_SAMPLER_SEED)
        noise = torch.randn(image.shape, generator=generator, device=generator.device).to(device)
        if strength >= 1:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image, noise, timesteps[:1].repeat(count))
        conditions = self._guidance(text_encoder, prompts, image, guidance)
        for t in timesteps:
            eps = conditions.noise(unet, scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(eps, t, latents).prev_sample
        decoded = vae.decode((latents / vae.config.scaling_factor).to(next(vae.parameters()).dtype),
                             return_dict=False)[0]
        return decoded.float().clamp(-1, 1)

    def _sampler_settings(self, request: Request) -> tuple[int, float, float]:
        """(steps, text guidance, effective strength) from the request, else the options."""
        o = self.options
        steps = o.sampler_steps if request.steps is None else int(request.steps)
        if steps < 1:
            raise SvaiError(f"--steps must be at least 1; got {steps}")
        guidance = o.guidance if request.guidance is None else float(request.guidance)
        if guidance < 0:
            raise SvaiError(f"--guidance must be 0 or more; got {guidance}")
        strength = o.strength if request.strength is None else float(request.strength)
        if not 0 <= strength <= 1:
            raise SvaiError(f"--strength must be between 0 and 1; got {strength}")
        intensity = self.intensity(request)
        return steps, guidance, strength * (1.0 if intensity is None else intensity)

    def _guidance(self, text_encoder: nn.Module, prompts: list[str], image: torch.Tensor,
                  guidance: float) -> "Guidance":
        """What the sampler conditions on: the prompts' embeddings, the empty prompt's when a
        guidance term needs them, the before latent ("concat") and the scales."""
        device = image.device
        image_scale = self.options.image_guidance if self.concat else 1.0
        cond = self._encode_text(text_encoder, prompts, device)
        empty = None
        # With every prompt empty, `cond` already is the empty prompt's.
        if any(prompts) and (guidance != 1 or image_scale != 1):
            empty = self._encode_text(text_encoder, [""] * len(prompts), device)
        return Guidance(cond, empty, image if self.concat else None, guidance, image_scale)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance (Ho & Salimans 2022) of one sampling run.

    - cond: (B, L, D) embeddings of the prompts; empty: those of the empty prompt, or None
      when no term needs them or the prompts are empty themselves.
    - image: (B, 4, h, w) the before latent the UNet input is concatenated with ("concat"),
      else None.
    - text_scale s_T, image_scale s_I: guidance scales; 1 drops that term's extra predictions.
    """

    cond: torch.Tensor
    empty: torch.Tensor | None
    image: torch.Tensor | None
    text_scale: float
    image_scale: float

    def noise(self, unet: nn.Module, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided prediction at timestep t, from one batched UNet call:

            ε = ε(∅, ∅) + s_I (ε(c_I, ∅) − ε(∅, ∅)) + s_T (ε(c_I, c_T) − ε(c_I, ∅))

        (Brooks et al. 2023, eq. 3); without the photo, ε(∅) + s_T (ε(c_T) − ε(∅)). Only the
        predictions a term needs are made: with empty prompts ε(c_I, ∅) = ε(c_I, c_T), with
        s_I = 1 ε(∅, ∅) is not needed. latents: (B, 4, h, w) -> (B, 4, h, w) float32.
        """
        # Branches (text, photo latent); the first is the fully conditioned one.
        branches = [(self.cond, self.image)]
        photo_term = self.image is not None and self.image_scale != 1
        text_branch = self.empty is not None and (self.text_scale != 1 or photo_term)
        if text_branch:
            branches.append((self.empty, self.image))
        if photo_term:
            branches.append((self.cond if self.empty is None else self.empty, torch.zeros_like(self.image)))
        inputs = torch.cat([latents] * len(branches))
        if self.image is not None:
            inputs = torch.cat([inputs, torch.cat([photo for _, photo in branches])], dim=1)
        text = torch.cat([embedding for embedding, _ in branches])
        eps = unet(inputs, t, encoder_hidden_states=text, return_dict=False)[0].float().chunk(len(branches))
        full = eps[0]
        text_free = eps[1] if text_branch else full
        unconditional = eps[-1] if photo_term else text_free
        return unconditional + self.image_scale * (text_free - unconditional) + self.text_scale * (full - text_free)


def _load_part(folder: Path, part: str) -> nn.Module:
    """One pretrained network of a diffusers folder, read offline."""
    try:
        if part == "text_encoder":
            from transformers import CLIPTextModel

            return CLIPTextModel.from_pretrained(str(folder / part), local_files_only=True)
        from diffusers import AutoencoderKL, UNet2DConditionModel

        cls = UNet2DConditionModel if part == "unet" else AutoencoderKL
        return cls.from_pretrained(str(folder), subfolder=part, local_files_only=True)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SvaiError(f"{folder / part}: cannot load the base model's {part} ({reason})") from None
