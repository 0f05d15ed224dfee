"""Shared blocks: reference parameter counts, self-attention, init, GAN losses, image pool."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from svai.errors import SvaiError
from svai.models.gan_training import ImagePool, gan_loss, linear_decay_factor
from svai.models.layers import (
    PatchDiscriminator, ResnetGenerator, SelfAttention, UnetGenerator, check_attention_heads, init_weights, norm_layer,
    patch_output_size,
)
from tests.support.models import count_parameters


def attention_parameters(channels: int) -> int:
    """SAGAN block: two 1×1 convs C -> C/8, one C -> C (weights + biases), and γ."""
    reduced = channels // 8
    return 2 * (channels * reduced + reduced) + (channels * channels + channels) + 1


# -- reference architectures ---------------------------------------------------------------
def test_reference_parameter_counts() -> None:
    # Counts of the reference implementation's resnet_9blocks, basic D, unet_256 at default width.
    assert count_parameters(ResnetGenerator()) == 11_378_179
    assert count_parameters(PatchDiscriminator(3, norm="instance")) == 2_764_737
    assert count_parameters(PatchDiscriminator(6, norm="batch")) == 2_768_705
    with torch.device("meta"):
        assert count_parameters(UnetGenerator(depth=8, norm="batch")) == 54_413_955


def test_attention_adds_exactly_one_sagan_block() -> None:
    plain = count_parameters(ResnetGenerator(ngf=16, n_blocks=2))
    with_attention = count_parameters(ResnetGenerator(ngf=16, n_blocks=2, attention_position=1, attention_heads=2))
    assert with_attention - plain == attention_parameters(64)
    d_plain = count_parameters(PatchDiscriminator(3, ndf=8))
    d_attention = count_parameters(PatchDiscriminator(3, ndf=8, attention=True))
    assert d_attention - d_plain == attention_parameters(64)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_patch_output_size_matches_forward(size: int) -> None:
    d = PatchDiscriminator(3, ndf=4)
    with torch.no_grad():
        out = d(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 1, patch_output_size(size, 3), patch_output_size(size, 3))
    if size == 256:
        assert out.shape[-1] == 30  # the 30×30 logit map of the 70×70 PatchGAN at 256 px
    assert patch_output_size(16, 3) == 0


@pytest.mark.parametrize("size", [32, 64])
def test_generators_keep_shape_and_range(size: int) -> None:
    x = torch.randn(2, 3, size, size) * 5
    with torch.no_grad():
        for g in (ResnetGenerator(ngf=4, n_blocks=1), UnetGenerator(depth=5, ngf=4)):
            y = g(x)
            assert y.shape == x.shape
            assert y.abs().max() <= 1.0


def test_unet_depth_levels_reach_one_pixel() -> None:
    # depth 5 at 32 px: the innermost level downsamples 2×2 -> 1×1 (and has no norm there).
    seen = []
    g = UnetGenerator(depth=5, ngf=4, norm="batch")
    innermost = g.model
    while not isinstance(innermost.submodule, nn.Identity):
        innermost = innermost.submodule
    innermost.down.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    g.train()
    g(torch.zeros(1, 3, 32, 32))  # batch 1 in train mode must work
    assert seen[0][-2:] == (1, 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in innermost.down)


# -- self-attention ----------------------------------------------------------------------------
def naive_attention(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Per-head SAGAN attention written position by position."""
    b, c, h, w = x.shape
    heads = block.heads
    flat = x.reshape(b, c, h * w)
    q = torch.einsum("oc,bcn->bon", block.query.weight[:, :, 0, 0], flat) + block.query.bias[None, :, None]
    k = torch.einsum("oc,bcn->bon", block.key.weight[:, :, 0, 0], flat) + block.key.bias[None, :, None]
    v = torch.einsum("oc,bcn->bon", block.value.weight[:, :, 0, 0], flat) + block.value.bias[None, :, None]
    outs = []
    for head in range(heads):
        qs, ks, vs = (t.chunk(heads, dim=1)[head] for t in (q, k, v))
        weights = torch.softmax(torch.einsum("bdi,bdj->bij", qs, ks), dim=-1)  # row i sums to 1
        outs.append(torch.einsum("bij,bdj->bdi", weights, vs))
    return x + block.gamma * torch.cat(outs, dim=1).reshape(b, c, h, w)


def test_attention_starts_as_identity() -> None:
    block = SelfAttention(32, heads=2)
    assert block.gamma.item() == 0.0
    x = torch.randn(2, 32, 5, 6)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_matches_naive_computation(heads: int) -> None:
    torch.manual_seed(0)
    block = SelfAttention(32, heads=heads)
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 32, 4, 5)
    torch.testing.assert_close(block(x), naive_attention(block, x), rtol=1e-5, atol=1e-5)
    assert count_parameters(block) == attention_parameters(32)


def test_attention_under_autocast_keeps_dtype() -> None:
    torch.manual_seed(0)
    block = SelfAttention(16)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(1, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), block(x.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_attention_heads_must_split_query_channels() -> None:
    with pytest.raises(ValueError):
        SelfAttention(32, heads=3)
    with pytest.raises(SvaiError, match="model.attention_heads") as error:
        check_attention_heads(3, 256)
    assert "\n" not in str(error.value)
    check_attention_heads(4, 256)  # 32 query channels split into 4 heads


# -- initialisation --------------------------------------------------------------------------
def test_init_is_normal_and_seeded() -> None:
    def build() -> nn.Module:
        torch.manual_seed(123)
        net = nn.Sequential(nn.Conv2d(64, 256, 3), nn.BatchNorm2d(256), SelfAttention(256))
        init_weights(net, 0.02)
        return net

    a, b = build(), build()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    conv, norm, attention = a[0], a[1], a[2]
    assert abs(conv.weight.mean().item()) < 1e-3
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0
    assert norm.weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert norm.weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert attention.gamma.item() == 0.0


def test_norm_factory() -> None:
    assert isinstance(norm_layer("batch")(4), nn.BatchNorm2d)
    instance = norm_layer("instance")(4)
    assert isinstance(instance, nn.InstanceNorm2d) and instance.weight is None
    assert isinstance(norm_layer("none")(4), nn.Identity)
    with pytest.raises(ValueError):
        norm_layer("layer")


# -- GAN losses ---------------------------------------------------------------------------------
def test_gan_losses_closed_form() -> None:
    zeros = torch.zeros(2, 1, 3, 3)
    assert gan_loss(zeros, True, "vanilla").item() == pytest.approx(math.log(2))
    assert gan_loss(zeros, False, "vanilla").item() == pytest.approx(math.log(2))
    x = torch.tensor([2.0, -1.0])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert gan_loss(x, True, "vanilla").item() == pytest.approx(expected, rel=1e-6)
    assert gan_loss(zeros, True, "lsgan").item() == pytest.approx(1.0)
    assert gan_loss(torch.full((4,), 0.5), False, "lsgan").item() == pytest.approx(0.25)
    assert gan_loss(x, True, "wgan-gp").item() == pytest.approx(-0.5)
    assert gan_loss(x, False, "wgan-gp").item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        gan_loss(x, True, "hinge")


def test_vanilla_loss_is_stable_for_large_logits() -> None:
    big = torch.tensor([100.0, -100.0], dtype=torch.bfloat16)
    assert torch.isfinite(gan_loss(big, True, "vanilla"))
    assert gan_loss(big, False, "vanilla").item() == pytest.approx(50.0, rel=1e-3)


def test_linear_decay_factor() -> None:
    assert linear_decay_factor(0, 1000, 0.5) == 1.0
    assert linear_decay_factor(500, 1000, 0.5) == 1.0
    assert linear_decay_factor(750, 1000, 0.5) == pytest.approx(0.5)
    assert linear_decay_factor(1000, 1000, 0.5) == 0.0
    assert linear_decay_factor(1200, 1000, 0.5) == 0.0
    assert linear_decay_factor(800, 1000, 0.2) == 1.0
    assert linear_decay_factor(900, 1000, 0.2) == pytest.approx(0.5)
    assert linear_decay_factor(999, 1000, 0.0) == 1.0
    factors = [linear_decay_factor(s, 100, 0.5) for s in range(101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


# -- image pool -----------------------------------------------------------------------------------
def labelled(values: list[int]) -> torch.Tensor:
    """Images whose every pixel holds their label, so returned images can be identified."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone()


def labels(images: torch.Tensor) -> list[int]:
    return [int(v) for v in images[:, 0, 0, 0]]


def test_pool_returns_newest_until_full_then_mixes() -> None:
    size = 4
    pool = ImagePool(size)
    generator = torch.Generator().manual_seed(0)
    assert labels(pool.query(labelled([0, 1]), generator)) == [0, 1]
    assert labels(pool.query(labelled([2, 3]), generator)) == [2, 3]
    stored = {0, 1, 2, 3}
    returned_old = returned_new = 0
    next_label = 4
    for _ in range(60):
        batch = list(range(next_label, next_label + 3))
        next_label += 3
        out = labels(pool.query(labelled(batch), generator))
        for new, got in zip(batch, out):
            if got == new:
                returned_new += 1
            else:
                # An old image comes out only by swapping with the new one.
                assert got in stored
                stored.remove(got)
                stored.add(new)
                returned_old += 1
        assert set(labels(pool.images)) == stored
        assert len(stored) == size
    # Each image is swapped with probability 1/2: 180 draws, both outcomes common.
    assert 60 < returned_old < 120 and returned_new == 180 - returned_old


def test_pool_uses_global_rng_reproducibly() -> None:
    def run() -> list[int]:
        torch.manual_seed(7)
        pool = ImagePool(3)
        return [label for k in range(20) for label in labels(pool.query(labelled([2 * k, 2 * k + 1])))]

    assert run() == run()


def test_pool_size_zero_passes_through() -> None:
    pool = ImagePool(0)
    images = labelled([5, 6])
    assert torch.equal(pool.query(images), images)
    assert pool.images.numel() == 0


def test_pool_state_survives_state_dict_round_trip() -> None:
    pool = ImagePool(5)
    pool.query(labelled([1, 2, 3, 4, 5, 6, 7]), torch.Generator().manual_seed(1))
    state = pool.state_dict()
    assert set(state) == {"images", "count"}
    fresh = ImagePool(5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.images, pool.images) and int(fresh.count) == 5
    queries = labelled(list(range(10, 30)))
    out_old = pool.query(queries, torch.Generator().manual_seed(3))
    out_new = fresh.query(queries, torch.Generator().manual_seed(3))
    assert torch.equal(out_old, out_new)
    with pytest.raises(RuntimeError, match="holds 5 images"):
        ImagePool(4).load_state_dict(state)


def test_pool_keeps_dtype_and_detaches() -> None:
    pool = ImagePool(2)
    fake = torch.randn(3, 3, 4, 4, requires_grad=True)
    out = pool.query(fake.bfloat16())
    assert out.dtype == torch.bfloat16 and not out.requires_grad
