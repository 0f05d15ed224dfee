"""Structural similarity (Wang et al. 2004), batched in torch.

Convention (the one most papers quote, and skimage with `gaussian_weights=True`):
Gaussian window 11x11 with sigma 1.5 (radius int(3.5 * 1.5 + 0.5) = 5), population
(co)variances, K1 = 0.01, K2 = 0.03, RGB in [0, 1] (data range 1), each channel computed
separately and the three averaged.

skimage filters the whole image with reflected borders and then drops a border of
(win - 1) / 2 = 5 pixels before averaging the SSIM map. The pixels it keeps are exactly those
whose window lies inside the image, so filtering without padding ("valid") gives the same map
with no border rule to imitate.
"""

from __future__ import annotations

import torch

SSIM_SIGMA: float = 1.5
SSIM_TRUNCATE: float = 3.5
SSIM_RADIUS: int = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
SSIM_WINDOW: int = 2 * SSIM_RADIUS + 1
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03
SSIM_SETTINGS: str = "gaussian 11x11 sigma 1.5, RGB in [0,1], channel mean"


def gaussian_kernel_1d(
    sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, shape (2 * radius + 1,), as scipy.ndimage builds them."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype)


def _band_matrix(size: int, taps: torch.Tensor) -> torch.Tensor:
    """(size, size - k + 1) matrix M with (x @ M)[j] = sum_i taps[i] x[j + i]: a valid 1-D filter."""
    k = taps.numel()
    out = size - k + 1
    matrix = torch.zeros(size, out, dtype=taps.dtype, device=taps.device)
    columns = torch.arange(out, device=taps.device)
    for i in range(k):
        matrix[columns + i, columns] = taps[i]
    return matrix


def _filter_valid(stack: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding. stack: (B, C, H, W) -> (B, C, H-2r, W-2r).

    Written as two matrix products with banded matrices rather than a depthwise convolution:
    float64 depthwise convolutions have no fast kernel on CPU (about 20x slower here), while
    float64 matrix products run at BLAS speed, so exact float64 costs no more than float32.
    """
    height, width = stack.shape[-2:]
    rows = stack @ _band_matrix(width, taps)
    return _band_matrix(height, taps).transpose(0, 1) @ rows


# Images per chunk are chosen so the four filtered moments stay near this many bytes.
_CHUNK_BYTES = 256 * 2**20


def ssim_map(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-pixel SSIM averaged over channels.

    pred, target: (B, 3, H, W) float in [0, 1], H and W at least 11.
    Returns (B, H - 10, W - 10): the map at every pixel whose 11x11 window lies inside the
    image (the pixel at [i, j] of the map is pixel [i + 5, j + 5] of the image).
    `dtype` is the compute precision: float32 by default (within 1e-6 of the float64
    reference, at half the cost), float64 for exact agreement. Peak memory is bounded by
    working in chunks of images.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    height, width = pred.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; got {height}x{width}")
    dtype = dtype or torch.float32
    channels = pred.shape[1]
    per_image = 4 * channels * height * width * torch.finfo(dtype).bits // 8
    step = max(1, _CHUNK_BYTES // per_image)
    if pred.shape[0] > step:
        # Bound peak memory for large images: the moments take 4x the input in `dtype`.
        return torch.cat([ssim_map(pred[i:i + step], target[i:i + step], dtype) for i in range(0, pred.shape[0], step)])
    # Variances are differences of large moments (E[x^2] - E[x]^2), which loses digits in
    # float32. Centring each channel on its image mean first keeps the moments small; the
    # (co)variances do not change, and the local means get the offset back.
    # The offsets need no precision of their own: they are subtracted and added back.
    x = pred.to(dtype)
    y = target.to(dtype)
    offset_x = x.mean(dim=(2, 3), keepdim=True)
    offset_y = y.mean(dim=(2, 3), keepdim=True)
    x = x - offset_x
    y = y - offset_y
    taps = gaussian_kernel_1d(dtype=dtype).to(x.device)
    # Four filtered maps, not five: var_x and var_y only appear as their sum, and
    # filter(x^2) + filter(y^2) = filter(x^2 + y^2) since the filter is linear.
    stack = torch.empty((x.shape[0], 4) + tuple(x.shape[1:]), dtype=dtype, device=x.device)
    stack[:, 0] = x
    stack[:, 1] = y
    torch.mul(x, x, out=stack[:, 2])
    stack[:, 2].addcmul_(y, y)
    torch.mul(x, y, out=stack[:, 3])
    moments = _filter_valid(stack.flatten(1, 2), taps).unflatten(1, (4, channels))
    del stack
    centred_x, centred_y, squares, products = moments.unbind(1)
    # Wang et al. 2004, eq. 13, with population (co)variances, K1/K2 times data range 1.
    # In place where possible: these maps are large and the work is memory-bound.
    variances = squares - centred_x.square() - centred_y.square()
    covariance = products.sub_(centred_x * centred_y)
    mu_x = centred_x.add_(offset_x)
    mu_y = centred_y.add_(offset_y)
    contrast = covariance.mul_(2).add_(SSIM_K2**2).div_(variances.add_(SSIM_K2**2))
    luminance = (mu_x * mu_y).mul_(2).add_(SSIM_K1**2).div_(mu_x.square_().add_(mu_y.square_()).add_(SSIM_K1**2))
    return luminance.mul_(contrast).mean(dim=1)


def ssim(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean SSIM per image. pred, target: (B, 3, H, W) in [0, 1] -> (B,) float64 in [-1, 1]."""
    return ssim_map(pred, target, dtype).mean(dim=(1, 2)).to(torch.float64)


def crop_to_ssim_map(mask: torch.Tensor) -> torch.Tensor:
    """Crop a (B, H, W) pixel mask to the pixels the SSIM map covers: (B, H - 10, W - 10)."""
    r = SSIM_RADIUS
    return mask[..., r:-r, r:-r]

