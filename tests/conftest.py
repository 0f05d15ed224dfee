"""Fixtures shared across the suite: tiny prepared datasets, and test-made pretrained weights.

Datasets:
    tiny_dataset (session): a prepared dataset of 32 px pairs (8 train, 4 test) whose "after"
        is a brightened, masked change of "before".

Weights: no test may touch the network, so instead of the published weights we save randomly
initialised networks of the exact architectures where torch.hub (and so pytorch-fid,
torchvision and lpips) would look for the real files: `$TORCH_HOME/hub/checkpoints/`.
The reference libraries then load the same tensors as svai does, and parity tests compare
like with like. They serve the metrics, `svai.weights` and any frozen network a model uses.
    torch_home (session): a folder holding hub/checkpoints/ with
        - pt_inception-2015-12-05-6726825d.pth: pytorch-fid's FID Inception, random init,
          batch-norm statistics calibrated on smooth synthetic images so that features do
          not vanish (an uncalibrated random Inception gives FID ≈ 1e-14 for any two sets);
        - alexnet-owt-7be5be79.pth, squeezenet1_1-b8a52dc0.pth: random torchvision state dicts.
    vgg_weights_dir (session) / use_vgg_weights (function): random torchvision VGG-16 and
        VGG-19 under their published names in a folder of their own, set as $SVAI_WEIGHTS_DIR.
    use_torch_home (function): points $TORCH_HOME at `torch_home` and clears
        $SVAI_WEIGHTS_DIR; returns the checkpoints folder.
    image_folders (session): two folders `a` and `b` of 24 PNGs each, 64 px, of different
        content, for FID parity with pytorch-fid's file-based pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.datasets import write_tiny_dataset


# The networks in tests are tiny: one thread is as fast as two for them, and it keeps a
# busy machine from thrashing between OpenMP threads.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


# --------------------------------------------------------------------------------------------
# Test-made pretrained weights (see the module docstring)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
SQUEEZENET_FILE = "squeezenet1_1-b8a52dc0.pth"

IMAGE_SIZE = 64
IMAGES_PER_FOLDER = 24
CALIBRATION_IMAGES = 32


def smooth_images(n: int, size: int, seed: int, style: str) -> np.ndarray:
    """`n` natural-looking RGB images: a colour gradient plus soft blobs, (n, size, size, 3) uint8.

    style "warm": reds/yellows with a few large blobs; style "cool": blues/greens with more,
    smaller blobs and a faint stripe pattern. The two styles give clearly different FID
    statistics; white noise would not exercise the network like images do.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        if style == "warm":
            base = rng.uniform([0.5, 0.2, 0.0], [1.0, 0.7, 0.3], size=(2, 3))
            blobs, radius = rng.integers(2, 4), (0.15, 0.35)
        elif style == "cool":
            base = rng.uniform([0.0, 0.3, 0.4], [0.3, 0.8, 1.0], size=(2, 3))
            blobs, radius = rng.integers(5, 9), (0.05, 0.15)
        else:
            raise ValueError(f"unknown style {style!r}")
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
        img = (1 - t)[..., None] * base[0] + t[..., None] * base[1]
        for _ in range(blobs):
            cy, cx = rng.uniform(0, 1, size=2)
            r = rng.uniform(*radius)
            weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))[..., None]
            img = (1 - weight) * img + weight * rng.uniform(0, 1, size=3)
        if style == "cool":
            img = img + 0.08 * np.sin(2 * np.pi * rng.uniform(3, 6) * xx)[..., None]
        out[i] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


def calibrated_fid_inception(seed: int = 0) -> torch.nn.Module:
    """pytorch-fid's FID Inception with random weights and calibrated batch-norm statistics.

    Calibration: reset every BatchNorm's running statistics, set momentum=None (cumulative
    average), run one train-mode forward pass over smooth images, switch to eval. The
    running statistics then equal the batch statistics, so activations keep unit scale
    through all 90-odd layers instead of vanishing.
    """
    from svai.metrics.inception import build_fid_inception

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_fid_inception()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    half = CALIBRATION_IMAGES // 2
    pixels = np.concatenate(
        [smooth_images(half, IMAGE_SIZE, 1000 + seed, "warm"), smooth_images(half, IMAGE_SIZE, 2000 + seed, "cool")]
    )
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    # The same preprocessing pytorch-fid applies before the network.
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME with test-made weights under the real file names (see module docstring)."""
    import torchvision  # only the sessions that need weights pay for importing it

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(calibrated_fid_inception().state_dict(), checkpoints / INCEPTION_FILE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / ALEXNET_FILE)
        torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), checkpoints / SQUEEZENET_FILE)
    return home


@pytest.fixture
def use_torch_home(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $TORCH_HOME at the test-made weights; returns its hub/checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("SVAI_WEIGHTS_DIR", raising=False)
    return torch_home / "hub" / "checkpoints"


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Folders `a` (warm style) and `b` (cool style), 24 PNGs of 64 px each."""
    root = tmp_path_factory.mktemp("fid_images")
    folders = []
    for name, style, seed in (("a", "warm", 11), ("b", "cool", 12)):
        folder = root / name
        folder.mkdir()
        for i, pixels in enumerate(smooth_images(IMAGES_PER_FOLDER, IMAGE_SIZE, seed, style)):
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        folders.append(folder)
    return folders[0], folders[1]


VGG_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}


@pytest.fixture(scope="session")
def vgg_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding randomly initialised torchvision VGG-16 and VGG-19 state dicts (the
    whole networks, classifier included) under the published file names. Kept apart from
    `torch_home` so the metric tests that expect no VGG there still see none."""
    import torchvision

    folder = tmp_path_factory.mktemp("vgg_weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        for arch, filename in VGG_FILES.items():
            torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), folder / filename)
    return folder


@pytest.fixture
def use_vgg_weights(vgg_weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $SVAI_WEIGHTS_DIR (searched first) at the test-made VGG files; returns the folder."""
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(vgg_weights_dir))
    return vgg_weights_dir


# ---------------------------------------------------------------------------------- face layer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def face_weights() -> Path:
    """The face layer's three published files (real networks, not stand-ins).

    `make test` imports them into .venv/weights from the registry packages that ship them and
    passes the folder as $SVAI_FACE_WEIGHTS. Elsewhere the tests that need them are skipped,
    except under CI, where a missing file is a failure.
    """
    import os

    from svai import weights
    from svai.face.finder import FACE_WEIGHTS, available

    folder = Path(os.environ.get("SVAI_FACE_WEIGHTS", REPO / ".venv" / "weights"))
    missing = [k for k in FACE_WEIGHTS if not (folder / weights.spec(k).filename).is_file()]
    if missing or not available():
        reason = f"face layer not installed or weights {missing} not in {folder} (make test installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture
def use_face_weights(face_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$SVAI_WEIGHTS_DIR pointed at the face weights (for code that looks them up itself)."""
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(face_weights))
    return face_weights


@pytest.fixture(scope="session")
def face_finder(face_weights: Path):  # type: ignore[no-untyped-def]
    from svai.face import FaceFinder

    with FaceFinder(face_weights) as finder:
        yield finder


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()
