"""What svai sees of a face: the detector, the 478-point landmarks, procedure regions, identity.

- `svai.face.mesh`: geometry on landmarks (regions, the face square, units); numpy only.
- `svai.face.finder`: `FaceFinder` (YuNet, then MediaPipe's FaceLandmarker) and `Face`.
- `svai.face.identity`: `IdentityScorer` (SFace cosine: is it still the patient?).
- `svai.face.store`: a prepared dataset's landmarks file per split.

The networks need the optional extra `svai[face]` and three published files (`svai weights`);
without the extra, `available()` is False and svai falls back to the skin-colour box.
"""

from svai.face.finder import INSTALL_HINT, Face, FaceFinder, available, missing_message
from svai.face.mesh import REGION_PROCEDURES, frame_square, interocular, region_mask, region_masks

__all__ = [
    "INSTALL_HINT",
    "Face",
    "FaceFinder",
    "REGION_PROCEDURES",
    "available",
    "frame_square",
    "interocular",
    "missing_message",
    "region_mask",
    "region_masks",
]
