"""Face landmarks for a model's request when nobody stored them: the face layer run on the image.

Families that read `Request.landmarks` get them from the dataset's stored file when the input
is a prepared split (`svai.generate`), and otherwise from here: the face layer
(`svai.face.finder`) on each photo, at whatever size it is given. Without the face layer
(the optional extra or its weights missing) every image counts as having no face, with one
warning per process saying why.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from svai.image_ops import to_uint8

log = logging.getLogger(__name__)


def find_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """The largest face's (478, 2) landmarks in an (H, W, 3) uint8 photo (continuous pixels),
    or None when there is no face or the face layer cannot run here."""
    from svai.face import finder

    shared = finder.usable_finder(log, "photos without stored landmarks are returned unchanged")
    if shared is None:
        return None
    faces = shared.find(np.ascontiguousarray(rgb))
    return faces[0].landmarks if faces else None


def detect_landmarks(images: torch.Tensor) -> list[np.ndarray | None]:
    """`find_landmarks` on each image of a batch (B, 3, H, W) in [-1, 1], in its pixels."""
    return [find_landmarks(image) for image in to_uint8(images)]


def landmark_rows(points: list[np.ndarray | None]) -> torch.Tensor:
    """Per-image landmarks as the request carries them: (B, 478, 2) float32, NaN where none."""
    from svai.face import mesh

    rows = np.full((len(points), mesh.POINTS, 2), np.nan, np.float32)
    for index, found in enumerate(points):
        if found is not None:
            rows[index] = found
    return torch.from_numpy(rows)


__all__ = ["detect_landmarks", "find_landmarks", "landmark_rows"]
