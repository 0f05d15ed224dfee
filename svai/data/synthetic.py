"""The built-in synthetic face dataset: procedurally drawn before/after pairs with exact ground truth.

Every face is drawn with numpy in float32 from implicit shapes (negative inside) whose edges are
anti-aliased over one pixel. A pair draws the same face twice on the same photo: same pose,
lighting, background and sensor-noise field; the "after" face differs only in the parameters that
its procedures change (eyes: larger opening and a defined crease; nose: narrower and straighter;
jaw: slimmer lower face). Pixels outside the changed region are therefore byte-identical, and the
mask is derived from the two finished images, so it covers every changed pixel.

Each pair also carries its procedure regions (`procedure_regions`): for every procedure, where
it can change this face in this photo, drawn from the face before any procedure and sized for
the strongest change, so they are what a clinic could draw on the before photo.

Coordinates: the image spans [-1, 1] on both axes (y down). Faces are drawn in "face units": the
same scale before the photo's pose (roll, shift, zoom) is applied, with the head centre at the
origin, eyes near v = 0, chin near v = 0.55. Every size from 32 to 512 px draws the same picture.

Pair i depends only on (seed, i): identity comes from the subject's own random stream, the photo
(pose, light, procedures) from the pair's, so a larger `count` extends a smaller one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from svai.data.layout import PROCEDURES, DatasetWriter, PairRecord, split_subjects
from svai.errors import SvaiError
from svai.io import OwnFiles

MIN_SIZE = 32
# A million pairs is days of drawing and tens of GB; more is a slip of the keyboard.
MAX_COUNT = 1_000_000
MAX_SIZE = 512

# Photos per subject and their probabilities: about two photos per subject on average, so a
# split by subject is meaningful even for small datasets.
_PHOTOS_PER_SUBJECT = (1, 2, 3, 4)
_PHOTOS_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
# How many procedures one pair gets (1, 2 or 3) and their probabilities.
_PROCEDURE_COUNT_WEIGHTS = (0.5, 0.3, 0.2)
# Intensity range of a procedure: the lower bound keeps every change visible at 32 px.
_MIN_INTENSITY, _MAX_INTENSITY = 0.4, 1.0

# Jaw narrowing starts below this v (about the nostrils) and is full at the chin.
_JAW_TOP = 0.16

# Random streams: identity is per subject, everything else per pair.
_STREAM_SUBJECT_SIZES = 0
_STREAM_IDENTITY = 1
_STREAM_PHOTO = 2

# Skin tones from very light to very dark (sRGB in [0, 1]); a uniform draw along this ramp
# covers the whole human range rather than clustering around one tone.
_SKIN_RAMP = np.array(
    [
        (0.97, 0.86, 0.79),
        (0.93, 0.76, 0.64),
        (0.83, 0.63, 0.48),
        (0.69, 0.48, 0.33),
        (0.52, 0.34, 0.22),
        (0.36, 0.23, 0.15),
        (0.22, 0.14, 0.10),
    ],
    dtype=np.float32,
)
_HAIR_COLOURS = (
    (0.05, 0.045, 0.045),  # black
    (0.16, 0.10, 0.07),    # dark brown
    (0.32, 0.20, 0.12),    # brown
    (0.46, 0.21, 0.10),    # auburn
    (0.74, 0.58, 0.34),    # blond
    (0.62, 0.60, 0.58),    # grey
    (0.86, 0.85, 0.82),    # white
)
_IRIS_COLOURS = (
    (0.20, 0.11, 0.06),
    (0.34, 0.20, 0.10),
    (0.44, 0.36, 0.18),
    (0.28, 0.42, 0.28),
    (0.28, 0.44, 0.64),
    (0.48, 0.53, 0.58),
)
_HAIR_STYLES = ("bald", "buzz", "short", "fringe", "long", "volume")

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class SyntheticPair:
    """One drawn pair.

    before, after: (S, S, 3) uint8 in [0, 255]; mask: (S, S) uint8, 255 where the procedures
    changed the face and 0 elsewhere. `intensities` holds one value in [0.4, 1] per procedure.
    regions: every procedure of PROCEDURES (done or not) -> (S, S) uint8, 255 where that
    procedure can change this face (`procedure_regions`), computed without the after image.
    """

    id: str
    subject: str
    procedures: tuple[str, ...]
    before: np.ndarray
    after: np.ndarray
    mask: np.ndarray
    intensities: tuple[float, ...] = ()
    regions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Face:
    """Identity of one subject, in face units (head half-width about 0.4)."""

    skin: Colour
    head_width: float        # half-width of the head at the cheekbones
    head_top: float          # centre to crown
    head_bottom: float       # centre to chin
    jaw_power: float         # superellipse exponent of the lower face: 2 round, >2 square, <2 pointed
    jaw_slim: float          # horizontal squeeze of the lower face (0 = none, 0.2 = 20 % at the chin)
    eye_dx: float            # half the distance between the eye centres
    eye_y: float
    eye_width: float         # half-width of the eye opening
    eye_open: float          # height of the upper lid arc above the eye axis
    eye_low: float           # depth of the lower lid arc
    eye_tilt: float          # canthal tilt: positive raises the outer corners
    crease_gap: float        # distance from the lash line to the lid crease
    crease: float            # crease darkness in [0, 1]
    iris: Colour
    brow_height: float       # eye centre to brow centre
    brow_thickness: float
    brow_arch: float
    brow: Colour
    nose_root: float         # v of the top of the nasal bridge
    nose_length: float
    bridge_width: float      # half-width of the bridge
    alar_width: float        # half-width across the nostril wings
    tip_radius: float
    hump: float              # dorsal hump in [0, 1]
    deviation: float         # lateral bend of the bridge (crooked nose)
    mouth_y: float
    mouth_width: float       # half-width of the mouth
    lip_upper: float
    lip_lower: float
    lip_bow: float           # depth of the Cupid's bow dip in [0, 1]
    lips: Colour
    hair_style: str
    hair: Colour
    hairline: float          # v of the hairline at the forehead centre
    hair_volume: float       # hair cap size relative to the skull
    hair_length: float       # v where long hair ends
    hair_part: float         # u of the parting
    ear_size: float
    neck_width: float
    clothes: Colour


@dataclass(frozen=True)
class Photo:
    """One photo of a subject: pose, light, background, noise and the eye gaze."""

    roll: float              # radians
    shift_x: float           # image units
    shift_y: float
    zoom: float              # face units -> image units
    yaw: float               # horizontal feature shift standing in for a small head turn
    light: tuple[float, float, float]  # unit vector towards the light (y down, z to the camera)
    ambient: float
    exposure: float
    tint: Colour
    background: tuple[Colour, Colour]
    background_angle: float
    gaze: tuple[float, float]
    noise_sigma: float       # in [0, 1] units of the 8-bit range
    noise_seed: int


# --------------------------------------------------------------------------------------------
# sampling


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _jitter(rng: np.random.Generator, colour: Colour | np.ndarray, amount: float) -> Colour:
    values = np.asarray(colour, dtype=np.float64) * (1.0 + rng.normal(0.0, amount, 3))
    return tuple(float(v) for v in _unit(values))  # type: ignore[return-value]


def _skin_tone(t: float) -> np.ndarray:
    """t in [0, 1] -> sRGB skin colour along the ramp, (3,) float32."""
    position = t * (len(_SKIN_RAMP) - 1)
    low = min(int(position), len(_SKIN_RAMP) - 2)
    frac = position - low
    return _SKIN_RAMP[low] * (1.0 - frac) + _SKIN_RAMP[low + 1] * frac


def sample_face(rng: np.random.Generator) -> Face:
    """Draw one subject's identity."""
    darkness = _uniform(rng, 0.0, 1.0)
    skin = _jitter(rng, _skin_tone(darkness), 0.035)
    # Darker skin makes dark hair more likely, but every colour stays possible.
    hair_weights = np.array([3.0 + 5 * darkness, 3.0 + 2 * darkness, 2.0, 0.8, 1.6 * (1.2 - darkness), 0.8, 0.4])
    hair = _jitter(rng, _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=hair_weights / hair_weights.sum())], 0.06)
    style = _HAIR_STYLES[rng.choice(len(_HAIR_STYLES), p=[0.08, 0.10, 0.27, 0.17, 0.26, 0.12])]
    # Brows are usually darker than light hair.
    brow_base = np.asarray(hair) * 0.6 if sum(hair) > 1.2 else np.asarray(hair) * 0.9
    lips_base = np.asarray(skin) * np.array([0.86, 0.58, 0.58]) + np.array([0.06, 0.0, 0.01])
    head_width = _uniform(rng, 0.36, 0.43)
    eye_width = _uniform(rng, 0.068, 0.088)
    nose_root = _uniform(rng, 0.01, 0.04)
    return Face(
        skin=skin,
        head_width=head_width,
        head_top=_uniform(rng, 0.54, 0.62),
        head_bottom=_uniform(rng, 0.52, 0.62),
        jaw_power=_uniform(rng, 1.7, 3.0),
        jaw_slim=_uniform(rng, -0.05, 0.1),
        eye_dx=_uniform(rng, 0.145, 0.185),
        eye_y=_uniform(rng, -0.02, 0.02),
        eye_width=eye_width,
        eye_open=_uniform(rng, 0.02, 0.034),
        eye_low=_uniform(rng, 0.012, 0.020),
        eye_tilt=_uniform(rng, -0.08, 0.18),
        crease_gap=_uniform(rng, 0.010, 0.018),
        crease=_uniform(rng, 0.0, 0.35),
        iris=_jitter(rng, _IRIS_COLOURS[rng.choice(len(_IRIS_COLOURS), p=[0.35, 0.2, 0.12, 0.1, 0.15, 0.08])], 0.08),
        brow_height=_uniform(rng, 0.075, 0.10),
        brow_thickness=_uniform(rng, 0.018, 0.032),
        brow_arch=_uniform(rng, 0.008, 0.025),
        brow=_jitter(rng, brow_base, 0.05),
        nose_root=nose_root,
        nose_length=_uniform(rng, 0.17, 0.24),
        bridge_width=_uniform(rng, 0.022, 0.034),
        alar_width=_uniform(rng, 0.064, 0.09),
        tip_radius=_uniform(rng, 0.024, 0.036),
        hump=_uniform(rng, 0.2, 1.0),
        deviation=_uniform(rng, 0.01, 0.03) * (1 if rng.random() < 0.5 else -1),
        mouth_y=nose_root + _uniform(rng, 0.31, 0.35),
        mouth_width=_uniform(rng, 0.09, 0.125),
        lip_upper=_uniform(rng, 0.018, 0.03),
        lip_lower=_uniform(rng, 0.024, 0.04),
        lip_bow=_uniform(rng, 0.1, 0.6),
        lips=_jitter(rng, np.clip(lips_base, 0, 1), 0.05),
        hair_style=style,
        hair=hair,
        hairline=_uniform(rng, -0.40, -0.28),
        hair_volume=_uniform(rng, 1.06, 1.16) if style != "volume" else _uniform(rng, 1.25, 1.4),
        hair_length=_uniform(rng, 0.55, 1.1),
        hair_part=_uniform(rng, -0.15, 0.15),
        ear_size=_uniform(rng, 0.085, 0.11),
        neck_width=head_width * _uniform(rng, 0.5, 0.62),
        clothes=tuple(float(v) for v in rng.uniform(0.08, 0.85, 3) * _uniform(rng, 0.5, 1.0)),  # type: ignore[arg-type]
    )


def sample_photo(rng: np.random.Generator) -> Photo:
    """Draw one photo's pose, light, background, gaze and noise."""
    azimuth = _uniform(rng, -0.75, 0.75)
    elevation = _uniform(rng, -0.55, 0.15)  # mostly from above (y points down)
    light = np.array([math.sin(azimuth), elevation, 1.0])
    light /= np.linalg.norm(light)
    base = rng.uniform(0.15, 0.9, 3)
    grey = base.mean()
    base = grey + (base - grey) * _uniform(rng, 0.1, 0.6)  # muted backgrounds
    other = _unit(base * _uniform(rng, 0.6, 1.2))
    return Photo(
        roll=math.radians(_uniform(rng, -6.0, 6.0)),
        shift_x=_uniform(rng, -0.05, 0.05),
        shift_y=_uniform(rng, -0.12, -0.04),
        zoom=_uniform(rng, 0.98, 1.12),
        yaw=_uniform(rng, -0.03, 0.03),
        light=tuple(float(v) for v in light),  # type: ignore[arg-type]
        ambient=_uniform(rng, 0.35, 0.6),
        exposure=_uniform(rng, 0.92, 1.08),
        tint=_jitter(rng, (1.0, 1.0, 1.0), 0.025),
        background=(tuple(float(v) for v in base), tuple(float(v) for v in other)),  # type: ignore[arg-type]
        background_angle=_uniform(rng, 0.0, 2 * math.pi),
        gaze=(_uniform(rng, -0.25, 0.25), _uniform(rng, -0.15, 0.15)),
        noise_sigma=_uniform(rng, 0.5, 3.5) / 255.0,
        noise_seed=int(rng.integers(0, 2**63 - 1)),
    )


def sample_procedures(rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """One to three procedures in PROCEDURES order, each with an intensity in [0.4, 1]."""
    how_many = 1 + int(rng.choice(3, p=_PROCEDURE_COUNT_WEIGHTS))
    chosen = set(rng.choice(len(PROCEDURES), size=how_many, replace=False).tolist())
    names = tuple(p for i, p in enumerate(PROCEDURES) if i in chosen)
    intensities = tuple(_uniform(rng, _MIN_INTENSITY, _MAX_INTENSITY) for _ in names)
    return names, intensities


def apply_procedures(face: Face, procedures: tuple[str, ...], intensities: tuple[float, ...]) -> Face:
    """The same face after the procedures; intensity 0 changes nothing, 1 is the strongest change.

    Only parameters that no other part of the drawing depends on are changed, so the rest of
    the picture stays identical.
    """
    changes: dict[str, float] = {}
    for name, k in zip(procedures, intensities):
        if name == "eyes":
            # Blepharoplasty-like: a larger opening and a higher, clearly defined crease.
            changes["eye_open"] = face.eye_open * (1.0 + 0.6 * k)
            changes["crease"] = min(1.0, face.crease + 0.35 + 0.45 * k)
            changes["crease_gap"] = face.crease_gap * (1.0 + 0.35 * k)
        elif name == "nose":
            # Rhinoplasty-like: narrower wings, tip and bridge; hump and bend mostly removed.
            changes["alar_width"] = face.alar_width * (1.0 - 0.3 * k)
            changes["tip_radius"] = face.tip_radius * (1.0 - 0.18 * k)
            changes["bridge_width"] = face.bridge_width * (1.0 - 0.3 * k)
            changes["hump"] = face.hump * (1.0 - 0.9 * k)
            changes["deviation"] = face.deviation * (1.0 - 0.9 * k)
        elif name == "jaw":
            # Jaw contouring: the jaw angles move in, the chin tip stays where it is.
            changes["jaw_slim"] = face.jaw_slim + 0.08 + 0.12 * k
        else:
            raise ValueError(f"unknown procedure {name!r}")
    return replace(face, **changes)


# --------------------------------------------------------------------------------------------
# drawing primitives

Window = tuple[slice, slice]


@dataclass(frozen=True)
class _Frame:
    """Everything a photo fixes before any face is drawn; shared by the before and after images.

    u, v: (S, S) float32 face coordinates of the pixel centres; background: (S, S, 3) in [0, 1];
    shade_bg, shade_person: (S, S) light multipliers; noise: (S, S, 3) added last.
    """

    size: int
    photo: Photo
    u: np.ndarray
    v: np.ndarray
    px: float  # one pixel in face units
    background: np.ndarray
    shade_bg: np.ndarray
    shade_person: np.ndarray
    noise: np.ndarray


def _make_frame(photo: Photo, size: int) -> _Frame:
    axis = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    cos, sin = math.cos(photo.roll), math.sin(photo.roll)
    dx = (axis - photo.shift_x)[None, :]
    dy = (axis - photo.shift_y)[:, None]
    u = ((cos * dx + sin * dy) / photo.zoom).astype(np.float32)
    v = ((cos * dy - sin * dx) / photo.zoom).astype(np.float32)

    c0 = np.asarray(photo.background[0], dtype=np.float32)
    c1 = np.asarray(photo.background[1], dtype=np.float32)
    along = _unit(0.5 + 0.5 * (math.cos(photo.background_angle) * axis[None, :]
                                 + math.sin(photo.background_angle) * axis[:, None]))
    vignette = 1.0 - 0.18 * (axis[None, :] ** 2 + axis[:, None] ** 2)
    background = (c0 + along[..., None] * (c1 - c0)) * vignette[..., None]

    lx, ly, lz = photo.light
    shade_bg = (1.0 + 0.12 * (lx * axis[None, :] + ly * axis[:, None])).astype(np.float32)
    # Lambert shading of an ellipsoid standing in for the head and shoulders. It does not
    # depend on the jaw, so a jaw change alters only the pixels whose colour it alters.
    nx = u * (1.0 / 0.52)
    ny = (v - 0.05) * (1.0 / 0.78)
    r2 = np.minimum(nx * nx + ny * ny, 0.92)
    nz = np.sqrt(1.0 - r2)
    lambert = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
    diffuse = 1.0 - photo.ambient
    shade_person = (photo.ambient + diffuse * lambert) * (1.05 / (photo.ambient + diffuse * lz))

    noise = _sensor_noise(np.random.default_rng(photo.noise_seed), size) * np.float32(photo.noise_sigma)
    return _Frame(size, photo, u, v, 2.0 / (size * photo.zoom), background.astype(np.float32),
                  shade_bg, shade_person.astype(np.float32), noise)


def _sensor_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-variance noise (size, size, 3) float32.

    The sum of two uniform bytes (a triangular distribution) looks like Gaussian sensor noise
    at 8-bit precision and costs a fraction of drawing normal variates.
    """
    count = size * size * 3
    raw = np.frombuffer(rng.bytes(2 * count), dtype=np.uint8)
    total = raw[:count].astype(np.float32)
    total += raw[count:]
    total -= 255.0
    total *= np.float32(1.0 / math.sqrt(2.0 * (256.0**2 - 1.0) / 12.0))
    return total.reshape(size, size, 3)


def _window(frame: _Frame, u0: float, u1: float, v0: float, v1: float) -> Window | None:
    """Pixel rows/columns covering the face-unit box [u0, u1] x [v0, v1]; None when off-image."""
    photo, size = frame.photo, frame.size
    cos, sin = math.cos(photo.roll), math.sin(photo.roll)
    cols, rows = [], []
    for uu, vv in ((u0, v0), (u0, v1), (u1, v0), (u1, v1)):
        x = photo.shift_x + photo.zoom * (cos * uu - sin * vv)
        y = photo.shift_y + photo.zoom * (sin * uu + cos * vv)
        cols.append((x + 1.0) * size / 2.0 - 0.5)
        rows.append((y + 1.0) * size / 2.0 - 0.5)
    c0, c1 = max(math.floor(min(cols)) - 1, 0), min(math.ceil(max(cols)) + 2, size)
    r0, r1 = max(math.floor(min(rows)) - 1, 0), min(math.ceil(max(rows)) + 2, size)
    if c1 - c0 < 3 or r1 - r0 < 3:
        return None
    return slice(r0, r1), slice(c0, c1)


def _unit(x: np.ndarray) -> np.ndarray:
    """x clamped to [0, 1]; the two ufuncs are much cheaper than np.clip on small arrays."""
    return np.minimum(np.maximum(x, 0.0), 1.0)


def _gradient_norm(f: np.ndarray) -> np.ndarray:
    """|grad f| per pixel, (h, w): central differences inside, one-sided on the border."""
    gx = np.empty_like(f)
    gy = np.empty_like(f)
    np.subtract(f[:, 2:], f[:, :-2], out=gx[:, 1:-1])
    gx[:, 1:-1] *= 0.5
    np.subtract(f[:, 1], f[:, 0], out=gx[:, 0])
    np.subtract(f[:, -1], f[:, -2], out=gx[:, -1])
    np.subtract(f[2:], f[:-2], out=gy[1:-1])
    gy[1:-1] *= 0.5
    np.subtract(f[1], f[0], out=gy[0])
    np.subtract(f[-1], f[-2], out=gy[-1])
    gx *= gx
    gy *= gy
    gx += gy
    return np.sqrt(gx, out=gx)


def _edge(f: np.ndarray, px: float) -> np.ndarray:
    """Coverage in [0, 1] of a signed distance f (face units, negative inside): a 1-pixel ramp."""
    return _unit(0.5 - f * (1.0 / px))


def _fill(f: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of any smooth implicit shape f < 0, anti-aliased over one pixel.

    Dividing by the pixel-space gradient turns f into an approximate distance in pixels, so
    shapes need not be written as exact distance fields.
    """
    return _unit(0.5 - f / (_gradient_norm(f) + 1e-12))


def _blob(du: np.ndarray, dv: np.ndarray, ru: float, rv: float) -> np.ndarray:
    """A soft bump: 1 at the centre, falling smoothly to exactly 0 at the ellipse (ru, rv)."""
    k = _unit(1.0 - (du * (1.0 / ru)) ** 2 - (dv * (1.0 / rv)) ** 2)
    return k * k


def _rgb(colour: Colour | np.ndarray) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32)


class _Canvas:
    """The picture being drawn: colour (S, S, 3) in [0, 1] plus how much of each pixel is person."""

    def __init__(self, frame: _Frame) -> None:
        self.frame = frame
        self.rgb = frame.background.copy()
        self.person = np.zeros((frame.size, frame.size), dtype=np.float32)

    def copy(self) -> "_Canvas":
        twin = _Canvas.__new__(_Canvas)
        twin.frame, twin.rgb, twin.person = self.frame, self.rgb.copy(), self.person.copy()
        return twin

    def paint(self, win: Window, alpha: np.ndarray, colour: np.ndarray, person: bool = True) -> None:
        """Blend colour ((3,) or (h, w, 3)) over the window with per-pixel alpha (h, w) in [0, 1]."""
        region = self.rgb[win]
        delta = colour - region
        delta *= alpha[..., None]
        region += delta
        if person:
            cover = self.person[win]
            cover += alpha * (1.0 - cover)

    def scale(self, win: Window, factor: np.ndarray) -> None:
        """Multiply the colour in the window by factor (h, w): below 1 darkens, above 1 lightens."""
        region = self.rgb[win]
        region *= factor[..., None]

    def finish(self) -> np.ndarray:
        """Apply light, exposure and sensor noise; (S, S, 3) uint8."""
        frame, photo = self.frame, self.frame.photo
        shade = frame.shade_bg + self.person * (frame.shade_person - frame.shade_bg)
        gain = _rgb(photo.tint) * np.float32(photo.exposure * 255.0)
        out = self.rgb * shade[..., None]
        out *= gain
        out += frame.noise * np.float32(255.0)
        out += np.float32(0.5)
        np.clip(out, 0.0, 255.0, out=out)
        return out.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# face parts, back to front

def _head_outline(u: np.ndarray, v: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to the head outline and rho / radius (1 on the outline), both (h, w).

    The outline is a radius per direction: an ellipse above the centre, a superellipse below
    (its exponent sets round, square or pointed jaws). Jaw narrowing squeezes the face
    horizontally below the cheekbones, growing smoothly towards the chin, so the upper face is
    untouched, the chin stays round and the face keeps its length.
    """
    ramp = _unit((v - _JAW_TOP) * (1.0 / (face.head_bottom * 0.85 - _JAW_TOP)))
    u = u * (1.0 + face.jaw_slim * ramp * ramp * (3.0 - 2.0 * ramp))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.sqrt(u * u + v * v)
        c = np.abs(u) / rho
        s = v / rho
        upper = 1.0 / np.sqrt((c * (1.0 / face.head_width)) ** 2 + (s * (1.0 / face.head_top)) ** 2)
        power = face.jaw_power
        lower = ((c * (1.0 / face.head_width)) ** power
                 + (np.maximum(s, 0.0) * (1.0 / face.head_bottom)) ** power) ** (-1.0 / power)
        radius = np.where(s < 0.0, upper, lower)
        return rho - radius, rho / radius


def _draw_head(canvas: _Canvas, face: Face) -> None:
    frame = canvas.frame
    # Widest possible half-width: a negative jaw_slim widens the lower face by up to 1 / (1 - 0.1).
    half = face.head_width * 1.12 + 0.02
    win = _window(frame, -half, half, -face.head_top - 0.02, face.head_bottom + 0.02)
    if win is None:
        return
    distance, ratio = _head_outline(frame.u[win], frame.v[win], face)
    # Darken towards the outline: the cheeks and jaw turn away from the camera.
    rim = _unit((ratio - 0.78) * (1.0 / 0.22))
    colour = _rgb(face.skin) * (1.0 - 0.25 * rim * rim)[..., None]
    canvas.paint(win, _edge(distance, frame.px), colour)


def _draw_neck_and_clothes(canvas: _Canvas, face: Face) -> None:
    frame = canvas.frame
    skin = _rgb(face.skin)
    w = face.neck_width
    win = _window(frame, -w - 0.06, w + 0.06, 0.15, 2.5)
    if win is not None:
        u, v = frame.u[win], frame.v[win]
        # The jaw shades the top of the neck.
        light = 0.6 + 0.32 * _unit((v - face.head_bottom * 0.75) * (1.0 / 0.3))
        canvas.paint(win, _edge(np.abs(u) - w, frame.px), skin * light[..., None])
    win = _window(frame, -1.6, 1.6, 0.55, 2.5)
    if win is not None:
        u, v = frame.u[win], frame.v[win]
        shoulders = 0.72 + 0.3 * (u * (1.0 / 0.95)) ** 2 - v
        neckline = (u * (1.0 / (w * 1.4))) ** 2 + ((v - 0.72) * (1.0 / 0.09)) ** 2 - 1.0
        alpha = _fill(np.maximum(shoulders, -neckline * 0.1))
        fold = 0.9 + 0.1 * _unit(1.0 - np.abs(u) * 0.8)
        canvas.paint(win, alpha, _rgb(face.clothes) * fold[..., None])


def _draw_ears(canvas: _Canvas, face: Face) -> None:
    frame = canvas.frame
    skin = _rgb(face.skin)
    for side in (-1.0, 1.0):
        cu = side * (face.head_width - 0.012)
        cv = face.eye_y + 0.055
        ru, rv = 0.045, face.ear_size
        win = _window(frame, cu - ru - 0.03, cu + ru + 0.03, cv - rv - 0.03, cv + rv + 0.03)
        if win is None:
            continue
        du, dv = frame.u[win] - cu, frame.v[win] - cv
        canvas.paint(win, _fill((du * (1.0 / ru)) ** 2 + (dv * (1.0 / rv)) ** 2 - 1.0), skin * 0.9)
        inner = _blob(du + side * 0.008, dv - 0.01, ru * 0.6, rv * 0.65)
        canvas.scale(win, 1.0 - 0.3 * inner)


def _hair_texture(u: np.ndarray, v: np.ndarray, hair: np.ndarray, px: float) -> np.ndarray:
    """Hair colour (h, w, 3) with faint strands.

    Each strand wave fades out when its period nears two pixels, so small images get flat
    hair instead of moire.
    """
    fine = 0.04 * min(max((2.0 * math.pi / 150.0 / px - 2.0) / 4.0, 0.0), 1.0)
    coarse = 0.03 * min(max((2.0 * math.pi / 67.0 / px - 2.0) / 4.0, 0.0), 1.0)
    strands = (1.0 - fine - coarse) + fine * np.sin(u * 150.0 + 4.0 * np.sin(v * 11.0)) \
        + coarse * np.sin(u * 67.0 - v * 23.0)
    return hair * strands[..., None]


def _draw_hair_back(canvas: _Canvas, face: Face) -> None:
    if face.hair_style not in ("long", "volume"):
        return
    frame = canvas.frame
    top = -face.head_top * face.hair_volume - 0.02
    bottom = face.hair_length if face.hair_style == "long" else face.head_bottom * 0.9
    half_width = face.head_width * (1.3 if face.hair_style == "long" else face.hair_volume * 1.05)
    win = _window(frame, -half_width - 0.05, half_width + 0.05, top - 0.05, bottom + 0.05)
    if win is None:
        return
    u, v = frame.u[win], frame.v[win]
    centre, half_height = (top + bottom) / 2.0, (bottom - top) / 2.0
    x = np.abs(u * (1.0 / half_width))
    y = np.abs((v - centre) * (1.0 / half_height))
    shape = x * x * x + y * y * y - 1.0
    canvas.paint(win, _fill(shape), _hair_texture(u, v, _rgb(face.hair) * 0.8, frame.px))


def _draw_hair_cap(canvas: _Canvas, face: Face) -> None:
    if face.hair_style == "bald":
        return
    frame = canvas.frame
    a = face.head_width
    volume = 1.02 if face.hair_style == "buzz" else face.hair_volume
    ru, rv = a * volume, face.head_top * (1.0 + (volume - 1.0) * 0.8)
    if face.hair_style in ("long", "volume"):
        side_v = face.eye_y + 0.02
    else:
        side_v = face.eye_y - 0.09
    hairline = face.hairline
    if face.hair_style == "fringe":
        hairline = face.eye_y - face.brow_height - 0.05
    win = _window(frame, -ru - 0.04, ru + 0.04, -rv - 0.04, side_v + 0.04)
    if win is None:
        return
    u, v = frame.u[win], frame.v[win]
    outer = (u * (1.0 / ru)) ** 2 + (v * (1.0 / rv)) ** 2 - 1.0
    # High over the forehead, sloping with the parting, dropping steeply at the temples.
    across = _unit((np.abs(u) - a * 0.45) * (1.0 / (a * 0.5)))
    line = hairline + 0.25 * face.hair_part * u + (side_v - hairline) * across ** 3
    if face.hair_style == "fringe":
        line = line + 0.012 * np.sin(u * 60.0)
    alpha = _fill(np.maximum(outer, (v - line) * 8.0))
    if face.hair_style == "buzz":
        alpha *= 0.6
    canvas.paint(win, alpha, _hair_texture(u, v, _rgb(face.hair), frame.px))


def _draw_eye(canvas: _Canvas, face: Face, side: float) -> None:
    """One eye: socket shadow, whites, iris and pupil clipped by the lids, lash line, crease."""
    frame, photo = canvas.frame, canvas.frame.photo
    skin = _rgb(face.skin)
    cu = side * face.eye_dx + photo.yaw * 0.5
    cv = face.eye_y
    ew = face.eye_width
    # Tall enough for the highest crease of a fully opened, tilted eye.
    win = _window(frame, cu - ew * 1.7, cu + ew * 1.7, cv - 0.12, cv + 0.07)
    if win is None:
        return
    du, dv = frame.u[win] - cu, frame.v[win] - cv
    canvas.scale(win, 1.0 - 0.14 * _blob(du, dv + 0.018, ew * 1.55, 0.06))

    p = du * (1.0 / ew)
    q = dv + side * face.eye_tilt * du  # outer corner raised for a positive tilt
    g = _unit(1.0 - p * p)
    upper = -face.eye_open * np.sqrt(g) * (0.5 + 0.5 * g)
    lower = face.eye_low * g
    opening = _fill(np.maximum(upper - q, q - lower))

    # Sclera, shaded under the upper lid; then iris, pupil and the light's reflection.
    lid_shadow = _unit((q - upper) * (1.0 / (face.eye_open * 0.8 + 1e-6)))
    inside = np.empty(du.shape + (3,), dtype=np.float32)
    inside[:] = _rgb((0.92, 0.89, 0.86))
    inside *= (0.62 + 0.38 * lid_shadow)[..., None]
    iris_r = ew * 0.46
    gu = du - photo.gaze[0] * ew * 0.35
    gv = dv - photo.gaze[1] * 0.01
    d = np.sqrt(gu * gu + gv * gv)
    ring = _unit(d * (1.0 / iris_r))
    iris = _rgb(face.iris)[None, None, :] * (1.05 - 0.5 * ring ** 4)[..., None] * (0.6 + 0.4 * lid_shadow)[..., None]
    a_iris = _edge(d - iris_r, frame.px)
    inside += a_iris[..., None] * (iris - inside)
    a_pupil = _edge(d - iris_r * 0.42, frame.px)
    inside *= (1.0 - 0.92 * a_pupil)[..., None]
    lx, ly, _ = photo.light
    glint = _edge(np.sqrt((gu - lx * iris_r * 0.45) ** 2 + (gv - ly * iris_r * 0.45 + iris_r * 0.3) ** 2)
                  - iris_r * 0.22, frame.px)
    inside += (0.8 * glint)[..., None] * (1.0 - inside)
    canvas.paint(win, opening, inside)

    # Lash line along the upper lid, heavier towards the outer corner; faint lower lid line.
    outer_side = _unit(side * p)
    lash_w = 0.0032 + 0.0035 * outer_side
    lash = _fill(np.maximum(np.abs(q - upper + lash_w * 0.4) - lash_w, (np.abs(p) - 1.04) * ew))
    lash_colour = _rgb(face.brow) * 0.35
    canvas.paint(win, lash, lash_colour)
    low_line = _fill(np.maximum(np.abs(q - lower) - 0.0018, (np.abs(p) - 0.95) * ew))
    canvas.paint(win, low_line * 0.35, skin * 0.55)

    # Lid crease: a fold following the lid at a gap, fading towards the corners.
    if face.crease > 0.0:
        crease_q = upper * (1.0 + face.crease_gap / face.eye_open) - face.crease_gap * 0.3 * g
        fold = _fill(np.maximum(np.abs(q - crease_q) - 0.0022, (np.abs(p) - 0.92) * ew))
        canvas.paint(win, fold * (face.crease * g), skin * 0.55)


def _draw_brow(canvas: _Canvas, face: Face, side: float) -> None:
    frame, photo = canvas.frame, canvas.frame.photo
    cu = side * (face.eye_dx + 0.012) + photo.yaw * 0.5
    cv = face.eye_y - face.brow_height
    half = face.eye_width * 1.35
    win = _window(frame, cu - half - 0.03, cu + half + 0.03,
                  cv - 0.04 - face.brow_thickness, cv + 0.03 + face.brow_thickness)
    if win is None:
        return
    du, dv = frame.u[win] - cu, frame.v[win] - cv
    p = du * (1.0 / half)
    outward = side * p
    curve = -face.brow_arch * (1.0 - ((outward - 0.3) * (1.0 / 1.3)) ** 2) + 0.006 * outward
    thickness = face.brow_thickness * (1.0 - 0.45 * _unit(outward))
    shape = np.maximum(np.abs(dv - curve) - thickness * 0.5, (np.abs(p) - 1.0) * half * 0.5)
    canvas.paint(win, _fill(shape) * 0.9, _hair_texture(du * 0.5, dv, _rgb(face.brow), frame.px))


def _draw_nose(canvas: _Canvas, face: Face) -> None:
    """Bridge shading (sides, ridge highlight, hump), tip, nostril wings, nostrils, shadow below."""
    frame, photo = canvas.frame, canvas.frame.photo
    lx = photo.light[0]
    skin = _rgb(face.skin)
    root, length = face.nose_root, face.nose_length
    tip_v = root + length
    root_u, tip_u = photo.yaw * 0.6, photo.yaw * 1.0
    win = _window(frame, root_u - 0.17, root_u + 0.17, root - 0.03, tip_v + 0.07)
    if win is None:
        return
    u, v = frame.u[win], frame.v[win]
    t = _unit((v - root) * (1.0 / length))
    centre = root_u + (tip_u - root_u) * t + face.deviation * np.sin(t * math.pi)
    d = u - centre
    hump = _unit(1.0 - ((t - 0.42) * (1.0 / 0.22)) ** 2) ** 2 * face.hump
    width = face.bridge_width * (0.75 + 0.35 * t) * (1.0 + 0.45 * hump)
    along = _unit(t * (1.0 / 0.3)) * _unit((1.0 - t) * (1.0 / 0.12))
    band = _unit(1.0 - np.abs(np.abs(d) - width * 1.2) * (1.0 / (width * 0.8))) ** 2
    away = np.clip(0.55 - 0.9 * np.sign(d) * lx, 0.1, 1.0)  # the side turned from the light is darker
    ridge = _unit(1.0 - ((d - lx * width * 0.3) * (1.0 / (width * 0.6))) ** 2)
    canvas.scale(win, 1.0 - 0.28 * band * away * along + (0.06 + 0.12 * hump) * ridge * along)

    # Lower nose around the tip.
    du, dv = u - tip_u, v - tip_v
    canvas.scale(win, 1.0 - 0.22 * _blob(du, dv - 0.022, face.alar_width * 0.95, 0.017))
    wing_r = 0.022
    for wing in (-1.0, 1.0):
        wu = du - wing * (face.alar_width - wing_r)
        wv = dv - 0.004
        k = np.sqrt((wu * (1.0 / wing_r)) ** 2 + (wv * (1.0 / (wing_r * 0.9))) ** 2)
        outer = _unit(wing * wu * (1.0 / wing_r) + 0.3)
        canvas.scale(win, 1.0 - 0.07 * _blob(wu, wv, wing_r, wing_r * 0.9))
        canvas.paint(win, _edge(np.abs(k - 1.0) * wing_r - 0.0025, frame.px) * outer * 0.55, skin * 0.62)
        nu = du - wing * face.alar_width * 0.45
        nv = dv - 0.016 + wing * 0.25 * nu
        nostril = (nu * (1.0 / (face.alar_width * 0.27))) ** 2 + (nv * (1.0 / 0.0075)) ** 2 - 1.0
        canvas.paint(win, _fill(nostril) * 0.85, skin * 0.25)
    canvas.scale(win, 1.0 + 0.12 * _blob(du - lx * 0.008, dv + 0.012, face.tip_radius, face.tip_radius * 0.8))


def _draw_lips(canvas: _Canvas, face: Face) -> None:
    frame, photo = canvas.frame, canvas.frame.photo
    cu, cv = photo.yaw * 0.6, face.mouth_y
    half = face.mouth_width
    win = _window(frame, cu - half * 1.4, cu + half * 1.4, cv - 0.06, cv + 0.075)
    if win is None:
        return
    du, dv = frame.u[win] - cu, frame.v[win] - cv
    p = du * (1.0 / half)
    g = _unit(1.0 - p * p)
    bow = 1.0 - face.lip_bow * _unit(1.0 - (p * (1.0 / 0.16)) ** 2)
    top = -face.lip_upper * np.sqrt(g) * bow
    bottom = face.lip_lower * g ** 0.6
    lips = _rgb(face.lips)
    canvas.scale(win, 1.0 - 0.12 * _blob(du, dv - face.lip_lower - 0.016, half * 0.55, 0.013))
    canvas.paint(win, _fill(np.maximum(top - dv, dv)), lips * 0.82)
    lower_colour = lips[None, None, :] * (1.0 + 0.18 * _blob(du, dv - face.lip_lower * 0.35, half * 0.4,
                                                              face.lip_lower * 0.4))[..., None]
    canvas.paint(win, _fill(np.maximum(-dv, dv - bottom)), lower_colour)
    line = _fill(np.maximum(np.abs(dv) - 0.0022, (np.abs(p) - 1.02) * half))
    canvas.paint(win, line * 0.85, lips * 0.4)


def _draw_eyes(canvas: _Canvas, face: Face) -> None:
    for side in (-1.0, 1.0):
        _draw_eye(canvas, face, side)


def _draw_brows(canvas: _Canvas, face: Face) -> None:
    for side in (-1.0, 1.0):
        _draw_brow(canvas, face, side)


# Drawing order, back to front. The parameters a procedure changes are read by one step only
# (_FIRST_STEP), and every step before it ignores them, so the "after" image can resume from a
# copy of the "before" canvas taken just before that step: same pixels, about half the work.
_STEPS: tuple[Callable[[_Canvas, Face], None], ...] = (
    _draw_hair_back,
    _draw_neck_and_clothes,
    _draw_ears,
    _draw_head,
    _draw_brows,
    _draw_lips,
    _draw_eyes,
    _draw_nose,
    _draw_hair_cap,
)
_FIRST_STEP = {"jaw": _STEPS.index(_draw_head), "eyes": _STEPS.index(_draw_eyes), "nose": _STEPS.index(_draw_nose)}


def render_face(frame: _Frame, face: Face) -> np.ndarray:
    """Draw one face on the frame's photo; (S, S, 3) uint8."""
    canvas = _Canvas(frame)
    for step in _STEPS:
        step(canvas, face)
    return canvas.finish()


def render_pair(
    frame: _Frame, face: Face, procedures: tuple[str, ...], intensities: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the face before and after the procedures on one photo; two (S, S, 3) uint8 images.

    Equal to (render_face(frame, face), render_face(frame, apply_procedures(...))), pixel for pixel.
    """
    after_face = apply_procedures(face, procedures, intensities)
    resume = min((_FIRST_STEP[p] for p in procedures), default=len(_STEPS))
    canvas = _Canvas(frame)
    saved = canvas
    for index, step in enumerate(_STEPS):
        if index == resume:
            saved = canvas.copy()
        step(canvas, face)
    before = canvas.finish()
    if resume == len(_STEPS):
        return before, before.copy()
    for step in _STEPS[resume:]:
        step(saved, after_face)
    return before, saved.finish()


def change_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(S, S) uint8 mask: 255 within a couple of pixels of any pixel that differs, else 0.

    The small dilation turns scattered edge pixels into a region a loss can weight, while
    staying close to the change itself.
    """
    grown = _dilate(np.any(before != after, axis=2), _mask_growth(before.shape[0]))
    return grown.astype(np.uint8) * np.uint8(255)


def _mask_growth(size: int) -> int:
    """Pixels by which `change_mask` grows the changed pixels at image size `size`."""
    return max(1, round(size / 64))


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """(H, W) bool grown by `steps` steps of the 4-neighbourhood (a diamond of that radius)."""
    grown = mask
    for _ in range(steps):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown


# --------------------------------------------------------------------------------------------
# procedure regions: where each procedure may change the face, known before any procedure

# Margin around every region, in face units (the head half-width is about 0.4), on top of the
# change mask's own growth in pixels: regions are meant to be generous.
_REGION_MARGIN = 0.02
# The largest change `apply_procedures` makes, at intensity 1: the regions are sized for it,
# so they never depend on which procedures a pair had or how strong they were.
_EYE_OPEN_MAX = 1.6        # eye_open x (1 + 0.6)
_CREASE_GAP_MAX = 1.35     # crease_gap x (1 + 0.35)
_JAW_SLIM_MAX = 0.2        # jaw_slim + 0.08 + 0.12


def _shape_in(frame: _Frame, box: tuple[float, float, float, float],
              shape: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """(S, S) bool: `shape(u, v)` evaluated only on the pixels of the face-unit box (u0, u1,
    v0, v1) that bounds it, False elsewhere (drawing does the same with `_window`)."""
    full = np.zeros((frame.size, frame.size), dtype=bool)
    win = _window(frame, *box)
    if win is not None:
        full[win] = shape(frame.u[win], frame.v[win])
    return full


def _eye_region(frame: _Frame, face: Face) -> np.ndarray:
    """Both eyes, (S, S) bool: the lids, lash lines and creases of the widest opening."""
    m, yaw = _REGION_MARGIN, frame.photo.yaw
    # The highest point that changes is the crease of the fully opened lid, the lowest the
    # lower lid (the sclera's lid shadow depends on the opening).
    top = face.eye_open * _EYE_OPEN_MAX + face.crease_gap * _CREASE_GAP_MAX * 1.3 + 0.004
    bottom = face.eye_low + 0.004
    half_height = (top + bottom) / 2.0 + m
    centre_q = (bottom - top) / 2.0
    half_width = face.eye_width * 1.08 + m
    # Beyond the corners the opening's anti-aliased edge still tints the eye axis faintly,
    # out to the end of the eye's drawing window (1.7 eye widths, plus the two pixels
    # `_window` adds).
    axis_width, axis_height = face.eye_width * 1.7 + m + 2.0 * frame.px, m + frame.px
    reach_u = max(half_width, axis_width)
    reach_v = top + bottom + m + frame.px + abs(face.eye_tilt) * reach_u
    region = np.zeros((frame.size, frame.size), dtype=bool)
    for side in (-1.0, 1.0):
        cu = side * face.eye_dx + yaw * 0.5

        def eye(u: np.ndarray, v: np.ndarray, side: float = side, cu: float = cu) -> np.ndarray:
            du, dv = u - cu, v - face.eye_y
            q = dv + side * face.eye_tilt * du  # the lids follow the canthal tilt
            # A superellipse (power 4): boxy enough to hold the corners of a tilted lid.
            lids = (du / half_width) ** 4 + ((q - centre_q) / half_height) ** 4 <= 1.0
            return lids | ((np.abs(du) <= axis_width) & (np.abs(q) <= axis_height))

        region |= _shape_in(frame, (cu - reach_u, cu + reach_u, face.eye_y - reach_v, face.eye_y + reach_v), eye)
    return region


def _nose_region(frame: _Frame, face: Face) -> np.ndarray:
    """The nose, (S, S) bool: the bridge between its straight and its bent line, and the tip."""
    m, yaw = _REGION_MARGIN, frame.photo.yaw
    root, length = face.nose_root, face.nose_length
    tip_v = root + length
    root_u, tip_u = yaw * 0.6, yaw * 1.0
    tip_half_width, tip_half_height = face.alar_width + 0.006 + m, 0.045 + m

    def nose(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = _unit((v - root) * (1.0 / length))
        straight = root_u + (tip_u - root_u) * t
        # The bridge shading reaches twice the bridge width from its centre line, which the
        # procedure moves from the bent line towards the straight one.
        reach = 2.0 * face.bridge_width * (0.75 + 0.35 * t) * (1.0 + 0.45 * face.hump)
        bend = abs(face.deviation) * np.sin(t * math.pi)
        bridge = (np.abs(u - straight) <= reach + bend + m) & (v >= root - m) & (v <= tip_v + m)
        # The tip, wings, nostrils and the shadow below them.
        du, dv = u - tip_u, v - (tip_v + 0.004)
        return bridge | ((du / tip_half_width) ** 4 + (dv / tip_half_height) ** 4 <= 1.0)

    half = max(2.0 * face.bridge_width * 1.1 * (1.0 + 0.45 * face.hump) + abs(face.deviation) + m, tip_half_width)
    box = (min(root_u, tip_u) - half, max(root_u, tip_u) + half, root - m, tip_v + 0.004 + tip_half_height)
    return _shape_in(frame, box, nose)


def _jaw_region(frame: _Frame, face: Face) -> np.ndarray:
    """The lower face's rim, (S, S) bool: where slimming the jaw can move the outline or its shading."""
    m = _REGION_MARGIN
    # Slimming scales u by at most `stretch` in the outline's norm, so only pixels whose ratio
    # can reach the rim shading's start (0.78 in _draw_head) can change.
    stretch = (1.0 + face.jaw_slim + _JAW_SLIM_MAX) / (1.0 + face.jaw_slim)

    def jaw(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        distance, ratio = _head_outline(u, v, face)
        return (ratio >= 0.78 / stretch - 0.05) & (distance <= m) & (v >= _JAW_TOP - m)

    half = face.head_width * 1.12 + 0.02 + m  # as wide as _draw_head looks
    return _shape_in(frame, (-half, half, _JAW_TOP - m, face.head_bottom + 0.02 + m), jaw)


_REGION_SHAPES: dict[str, Callable[[_Frame, Face], np.ndarray]] = {
    "eyes": _eye_region,
    "nose": _nose_region,
    "jaw": _jaw_region,
}


def procedure_regions(photo: Photo, face: Face, size: int) -> dict[str, np.ndarray]:
    """Where each procedure of PROCEDURES can change this face in this photo, before surgery.

    Computed from the face and the photo's pose alone, never from an operated face or image:
    each region holds every pixel its procedure can change at any intensity in [0, 1], with a
    margin of `_REGION_MARGIN` face units plus the change mask's own growth in pixels.
    Returns procedure -> (size, size) uint8, 255 inside the region, 0 elsewhere.
    """
    return _regions_on(_make_frame(photo, size), face)


def _regions_on(frame: _Frame, face: Face) -> dict[str, np.ndarray]:
    """`procedure_regions` on a frame already made for the photo."""
    grow = _mask_growth(frame.size) + 1
    regions = {}
    for name in PROCEDURES:
        inside = _dilate(_REGION_SHAPES[name](frame, face), grow)
        regions[name] = inside.astype(np.uint8) * np.uint8(255)
    return regions


# --------------------------------------------------------------------------------------------
# pairs and datasets


def _check_options(count: int, size: int, seed: int) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_COUNT:
        raise SvaiError(f"--count must be a whole number from 1 to {MAX_COUNT}; got {count!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise SvaiError(f"--size must be a whole number from {MIN_SIZE} to {MAX_SIZE}; got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise SvaiError(f"--seed must be a whole number from 0 to {2**63 - 1}; got {seed!r}")


def subject_indices(count: int, seed: int) -> list[int]:
    """Subject index of each of the first `count` pairs; a prefix of the list for a larger count."""
    subjects: list[int] = []
    k = 0
    while len(subjects) < count:
        rng = np.random.default_rng([seed, _STREAM_SUBJECT_SIZES, k])
        photos = _PHOTOS_PER_SUBJECT[int(rng.choice(len(_PHOTOS_PER_SUBJECT), p=_PHOTOS_WEIGHTS))]
        subjects.extend([k] * photos)
        k += 1
    return subjects[:count]


def pair_id(index: int) -> str:
    return f"syn-{index:06d}"


def subject_id(index: int) -> str:
    return f"s{index:05d}"


def generate_pairs(count: int, size: int, seed: int) -> Iterator[SyntheticPair]:
    """Yield `count` pairs of size x size images; pair i depends only on (seed, i).

    Raises SvaiError for count < 1, a size outside [32, 512] or a negative seed, at the call
    rather than at the first pair.
    """
    _check_options(count, size, seed)
    return _pairs(count, size, seed)


def _pairs(count: int, size: int, seed: int) -> Iterator[SyntheticPair]:
    face: Face | None = None
    face_subject = -1
    for index, subject in enumerate(subject_indices(count, seed)):
        if subject != face_subject:
            face = sample_face(np.random.default_rng([seed, _STREAM_IDENTITY, subject]))
            face_subject = subject
        assert face is not None
        rng = np.random.default_rng([seed, _STREAM_PHOTO, index])
        photo = sample_photo(rng)
        procedures, intensities = sample_procedures(rng)
        frame = _make_frame(photo, size)
        before, after = render_pair(frame, face, procedures, intensities)
        yield SyntheticPair(
            id=pair_id(index),
            subject=subject_id(subject),
            procedures=procedures,
            before=before,
            after=after,
            mask=change_mask(before, after),
            intensities=intensities,
            # From the face as drawn before the procedures: knowable before surgery.
            regions=_regions_on(frame, face),
        )


def write_synthetic_dataset(
    out: Path,
    count: int,
    size: int,
    seed: int,
    test_fraction: float = 0.1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Draw `count` pairs into the prepared layout under `out`, split by subject; return the summary.

    `progress(n)` is called after each written pair with the number written so far.
    """
    _check_options(count, size, seed)
    subjects = [subject_id(k) for k in subject_indices(count, seed)]
    test_subjects = split_subjects(subjects, test_fraction, seed)
    writer = DatasetWriter(Path(out), own=OwnFiles(Path(out)))
    for done, pair in enumerate(generate_pairs(count, size, seed), start=1):
        index = int(pair.id.split("-")[1])
        source = f"synthetic:seed={seed}:index={index}"
        record = PairRecord(
            id=pair.id,
            split="test" if pair.subject in test_subjects else "train",
            subject=pair.subject,
            procedures=pair.procedures,
            strengths=pair.intensities,
            source_before=f"{source}:before",
            source_after=f"{source}:after",
        )
        writer.add(record, pair.before, pair.after, pair.mask, regions=pair.regions)
        if progress is not None:
            progress(done)
    settings = {"source": "synthetic", "count": count, "size": size, "seed": seed, "test_fraction": test_fraction}
    return writer.close(settings)
