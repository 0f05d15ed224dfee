"""Composites: a model's output blended into the before photo inside a feathered region.

A composite keeps the patient's own pixels wherever the operation cannot reach: inside the
region the model's output shows, across a soft edge it fades out, and outside it every pixel
is the input's, byte for byte. The region must be known before surgery: the anatomical
region of the chosen procedures drawn on the before photo (`svai.data.regions`), or, when
none is known, the model's own change map. Never the dataset's change masks, which are
derived from the after photo and would leak the answer.

All images here are uint8 at the input's full resolution, so the blend never resamples the
pixels it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage

from svai.data.regions import RegionIndex, fit_region, read_region, region_key
from svai.errors import SvaiError


@dataclass(frozen=True)
class CompositeOptions:
    """How a composite is made.

    - feather: width of the soft edge outside the region, as a fraction of the image's
      short side (0.03 = 15 px at 512 px); at least one pixel.
    - change_threshold: without a region, a pixel belongs to the model's change map when its
      mean absolute change over the colour channels, smoothed over the feather scale,
      exceeds this fraction of the 8-bit range (0.04 = about 10 grey levels).
    """

    feather: float = 0.03
    change_threshold: float = 0.04

    def __post_init__(self) -> None:
        if not 0.0 <= self.feather <= 0.5:
            raise SvaiError(f"composite feather must be in [0, 0.5] of the image side; got {self.feather}")
        if not 0.0 < self.change_threshold < 1.0:
            raise SvaiError(f"composite change threshold must be in (0, 1); got {self.change_threshold}")

    def radius(self, height: int, width: int) -> float:
        """The feather's width in pixels for an image of this size."""
        return max(1.0, self.feather * min(height, width))


def union(regions: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The union of (H, W) masks (bool, or uint8 with 255 inside) as (H, W) bool."""
    out = np.zeros(shape, dtype=bool)
    for region in regions:
        if region.shape != shape:
            raise ValueError(f"region of shape {region.shape} for an image of {shape}")
        out |= region > (0 if region.dtype == bool else 127)
    return out


def feather(region: np.ndarray, radius: float) -> np.ndarray:
    """A soft-edged weight map: (H, W) bool -> (H, W) float32 in [0, 1].

    1 on the region; outside it, twice a Gaussian blur (sigma = radius / 3) of the region,
    capped at 1, so a straight edge starts at 1 and fades smoothly; exactly 0 farther than
    `radius` pixels from the region, so those pixels of a blend stay byte-identical. A larger
    region never gives a smaller weight anywhere.
    """
    if region.ndim != 2:
        raise ValueError(f"expected a (H, W) region; got shape {region.shape}")
    region = region.astype(bool)
    if not region.any():
        return np.zeros(region.shape, dtype=np.float32)
    sigma = radius / 3.0
    # Replicating the border treats a region that reaches the frame as going on beyond it.
    blurred = ndimage.gaussian_filter(region.astype(np.float32), sigma, mode="nearest", truncate=3.0)
    weight = np.minimum(2.0 * blurred, 1.0).astype(np.float32)
    weight[region] = 1.0
    distance = ndimage.distance_transform_edt(~region)
    weight[distance > radius] = 0.0
    return weight


def change_map(before: np.ndarray, prediction: np.ndarray, threshold: float, smooth: float) -> np.ndarray:
    """Where the model changed the photo: (H, W, 3) uint8 twice -> (H, W) bool.

    The mean absolute difference over the channels, in [0, 1], is blurred (sigma = smooth / 3
    pixels) so scattered noise does not count, then compared with `threshold`.
    """
    _check_pair(before, prediction)
    difference = np.abs(prediction.astype(np.float32) - before.astype(np.float32)).mean(axis=2) / 255.0
    if smooth > 0:
        difference = ndimage.gaussian_filter(difference, smooth / 3.0, mode="nearest", truncate=3.0)
    return difference > threshold


def blend(before: np.ndarray, prediction: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """before + weight x (prediction - before), rounded: (H, W, 3) uint8 twice, (H, W) in [0, 1]
    -> (H, W, 3) uint8. Where weight is 0 the result is the before pixel itself."""
    _check_pair(before, prediction)
    if weight.shape != before.shape[:2]:
        raise ValueError(f"weight of shape {weight.shape} for an image of {before.shape[:2]}")
    start = before.astype(np.float32)
    mixed = start + weight[..., None] * (prediction.astype(np.float32) - start)
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    # Exact by construction, not by the arithmetic above: pixels out of reach are copied.
    keep = weight <= 0.0
    out[keep] = before[keep]
    return out


def composite(
    before: np.ndarray,
    prediction: np.ndarray,
    region: np.ndarray | None,
    options: CompositeOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend `prediction` into `before` inside the feathered `region`.

    before, prediction: (H, W, 3) uint8 at the input's resolution; region: (H, W) bool, or
    None for the model's change map. Returns the composite (H, W, 3) uint8 and the weight
    map (H, W) float32 in [0, 1].
    """
    options = options or CompositeOptions()
    height, width = before.shape[:2]
    radius = options.radius(height, width)
    if region is None:
        region = change_map(before, prediction, options.change_threshold, radius)
    weight = blend_weight(region, options)
    return blend(before, prediction, weight), weight


def blend_weight(region: np.ndarray, options: CompositeOptions) -> np.ndarray:
    """The blend weight (H, W) float32 in [0, 1] of a (H, W) bool region: feathered inward by
    the options' radius at the region's size, or the region itself without feathering."""
    return feather(region, options.radius(*region.shape)) if options.feather > 0 else region.astype(np.float32)


def _check_pair(before: np.ndarray, prediction: np.ndarray) -> None:
    for name, image in (("before", before), ("prediction", prediction)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: expected (H, W, 3) uint8; got {image.dtype} {image.shape}")
    if before.shape != prediction.shape:
        raise ValueError(f"before {before.shape} and prediction {prediction.shape} differ in size")


class RegionLookup:
    """Finds the region of the chosen procedures for each input photo, before surgery.

    Sources, in order: the prepared dataset's own `DATA/{split}/regions` (keyed by the
    image's id, its file stem) when the input is a dataset split, then a `--regions` folder
    (keyed by the path relative to the input folder, without extension), then, with `faces`
    (a `svai.face.FaceFinder`), the regions drawn from the photo's own landmarks. The first
    source that has a region for every chosen procedure gives their union; with no procedure
    chosen, the first file source with any region for the photo gives the union of all of
    them, and the landmarks give the default procedures'. None means no source knows the
    region: the caller falls back to the change map.
    """

    def __init__(self, input_dir: Path, dataset: RegionIndex | None = None, folder: RegionIndex | None = None,
                 faces=None) -> None:  # type: ignore[no-untyped-def]
        self.input_dir = Path(input_dir)
        self.sources: list[tuple[RegionIndex, bool]] = []
        if dataset:
            self.sources.append((dataset, True))
        if folder:
            self.sources.append((folder, False))
        self.faces = faces

    def find(self, file: Path, shape: tuple[int, int], chosen: tuple[str, ...] | None,
             image: np.ndarray | None = None) -> np.ndarray | None:
        """The (H, W) bool region of `chosen` (None or () = every known one) for the input
        `file`, fitted to `shape` = (H, W); None when no source has it. `image` (the input
        photo) lets the landmarks source run."""
        return self.find_with_source(file, shape, chosen, image)[0]

    def find_with_source(self, file: Path, shape: tuple[int, int], chosen: tuple[str, ...] | None,
                         image: np.ndarray | None = None,
                         landmarks: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
        """`find` and the name of the source that answered ("regions", "landmark regions",
        or "change map" when none did); `landmarks`, the largest face's in `image` when they
        were found already, spare the face layer a second search."""
        for index, by_stem in self.sources:
            key = region_key(file.stem if by_stem else file.relative_to(self.input_dir).with_suffix("").as_posix())
            known = {name: files[key] for name, files in index.items() if key in files}
            names = tuple(chosen) if chosen else tuple(known)
            if not names or any(name not in known for name in names):
                continue
            return union((fit_region(read_region(known[name]), *shape) for name in names), shape), "regions"
        if self.faces is not None and image is not None:
            region = landmark_region(self.faces, image, chosen, landmarks)
            if region is not None:
                return region, "landmark regions"
        return None, "change map"


def landmark_region(finder, image: np.ndarray, chosen: tuple[str, ...] | None,  # type: ignore[no-untyped-def]
                    landmarks: np.ndarray | None = None) -> np.ndarray | None:
    """The union of the chosen procedures' landmark regions (default: eyes, nose, jaw) of the
    largest face in `image` (its `landmarks` when known, else found by `finder`), (H, W) bool;
    None without a face or for a procedure the face mesh does not know."""
    from svai.face import mesh

    if chosen and any(name not in mesh.REGION_SHAPES for name in chosen):
        return None  # known before any face is looked for
    if landmarks is None:
        faces = finder.find(image)
        if not faces:
            return None
        landmarks = faces[0].landmarks
    return landmark_mask(landmarks, chosen, *image.shape[:2])


def landmark_mask(landmarks: np.ndarray, chosen: tuple[str, ...] | None, height: int,
                  width: int) -> np.ndarray | None:
    """The union of the chosen procedures' regions (default: eyes, nose, jaw) drawn from a
    face's (478, 2) landmarks on a (height, width) canvas, bool; None for a procedure the face
    mesh does not know."""
    from svai.data.layout import PROCEDURES
    from svai.face import mesh

    names = tuple(chosen) if chosen else PROCEDURES
    if any(name not in mesh.REGION_SHAPES for name in names):
        return None
    return union(mesh.region_masks(landmarks, names, width, height).values(), (height, width))


__all__ = ["CompositeOptions", "RegionLookup", "blend", "blend_weight", "change_map", "composite", "feather",
           "landmark_mask", "landmark_region", "union"]
