"""Is it still the patient? OpenCV's SFace face-recognition embedding and its cosine.

A face is aligned on five landmarks (eyes, nose tip, mouth corners) to the 112 x 112 frame
the network was trained on, then embedded as a 128-vector of unit length; two faces are
compared by the cosine of their embeddings. SFace's published same-person threshold is
0.363; a photo against its own JPEG copy scores about 0.99, the same person darkened or
mirrored 0.94-0.96, different people 0.05-0.2.

The network is the published file of `svai weights` key `face-identity`, run through
OpenCV's dnn module (its `FaceRecognizerSF.feature` fails on OpenCV 5.1's graph engine,
so the embedding is computed here the way that class computes it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svai.face import mesh
from svai.face.finder import require_libraries, verified_weights

SAME_PERSON = 0.363
SIDE = 112
# Where the five alignment points sit in the 112 x 112 frame (the recognition model's template).
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, shift) mapping `source` points onto
    `target` points in the least-squares sense (Umeyama's closed form)."""
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - src_mean, dst - dst_mean
    covariance = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(covariance)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / max((a**2).sum() / len(src), 1e-12)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two unit embeddings, kept inside [-1, 1] against rounding."""
    return float(np.clip(a @ b, -1.0, 1.0))


class IdentityScorer:
    """SFace embeddings of faces given their landmarks; `similarity` compares two photos."""

    def __init__(self, weights_dir: str | Path | None = None) -> None:
        cv2, _, _ = require_libraries("the identity score")
        self._cv2 = cv2
        path = verified_weights("face-identity", weights_dir)
        self._net = cv2.dnn.readNetFromONNX(str(path))

    def aligned(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The (112, 112, 3) uint8 RGB face aligned on its five points."""
        matrix = similarity_transform(mesh.alignment_points(landmarks), TEMPLATE)
        return self._cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (SIDE, SIDE), flags=self._cv2.INTER_LINEAR)

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(128,) float64 unit embedding of the face at `landmarks` in an RGB photo."""
        face = self.aligned(rgb, landmarks)
        # The network takes RGB planes, unscaled 0-255 (what FaceRecognizerSF feeds it).
        blob = face.astype(np.float32).transpose(2, 0, 1)[None]
        self._net.setInput(np.ascontiguousarray(blob), "data")
        vector = self._net.forward().reshape(-1).astype(np.float64)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def similarity(self, a: np.ndarray, b: np.ndarray, landmarks: np.ndarray,
                   landmarks_b: np.ndarray | None = None) -> float:
        """Cosine between the faces of two photos; `landmarks_b` defaults to `landmarks` (a
        simulation keeps the before photo's geometry outside the operated regions)."""
        other = landmarks if landmarks_b is None else landmarks_b
        return cosine(self.embed(a, landmarks), self.embed(b, other))
