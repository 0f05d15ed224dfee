"""landmark-warp: a simulation that moves the face's landmarks the way the chosen procedures
moved them in the training pairs, and warps the photo to follow them.

Fitted, not trained: `fit` reads every training pair's before and after landmarks (stored by
`svai prepare`) and solves for one displacement field per procedure in the face's own frame
(`svai.models.landmark_fields`). To simulate, the input photo's landmarks move by
Σ strength × field × intensity; the photo is resampled through the thin-plate spline that
carries the old landmarks onto the new ones (`svai.warp`), at the photo's own resolution,
inside the regions of the ticked procedures only, with the field fading to zero at their edge:
every pixel outside them is the input's, bit for bit, and the skin's texture is the patient's
own, moved.

With `refine`, a U-Net (`svai.models.layers.UnetGenerator`) then learns, by gradient steps
through the shared loop, what the landmark warp misses: it sees the warped image and the
procedure strengths and its output head (`svai.models.heads`, residual or warp) changes the
warped image, again inside the ticked regions only, trained with L1 to the true after photo.

The landmarks reach the family through `Request.landmarks` (the dataset's stored ones, or the
face layer's on the photo; see docs/architecture.md); without a face, the photo comes back
unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.face import mesh
from svai.models.base import Batch, LossResult, ModelFamily, Networks, Phase, Request, StepContext
from svai.models.heads import OutputHead
from svai.models.landmark_fields import Fields, FitSettings, fit_fields
from svai.models.layers import UnetGenerator, check_before, init_weights, tile_labels
from svai.models.options import OutputOptions, check_at_least, check_positive
from svai.models.registry import register_family
from svai.threads import single_thread
from svai.warp import (
    Box, FaceFrame, backward_field, face_frame, landmarks_found, procedure_polygons, region_box, region_weight,
    resample_box,
)

log = logging.getLogger(__name__)

# Calibration: the gains tried, the pairs used per procedure, and how many pairs with the
# procedure alone are enough to use only those.
GAIN_GRID = np.round(np.arange(0.25, 4.001, 0.25), 2)
CALIBRATION_PAIRS = 32
MIN_ALONE = 8


@dataclass
class LandmarkWarpOptions:
    """Options of `landmark-warp`; each is a key under ``model:``.

    Fit (`svai.models.landmark_fields`):
    - shape_components: K ≥ 0 principal components of the face's shape the fields depend on
      (0: one field per procedure, the same for every face).
    - ridge: ≥ 0, penalty on the shape-dependent terms.
    - robust: Huber weights per pair, so a pair with misread landmarks counts less.
    - align: bring each after face onto its before face by a similarity on the landmarks no
      procedure moves (pose and distance differ between two real photos).
    - support: "region" (a procedure moves only the landmarks inside its region) | "all".
    - calibrate: scale each procedure's field by the gain (0.25 to 4) whose warp best
      reproduces the training after photos' pixels (the landmarker reads some changes only in
      part); off: gain 1.
    Warp (`svai.warp`):
    - smoothing: ≥ 0, the thin-plate spline's smoothing in squared inter-ocular distances
      (0 interpolates the moved landmarks exactly).
    - feather: > 0, the width over which the warp fades to nothing at the edge of the ticked
      regions, in inter-ocular distances.
    Learned refinement (optional):
    - refine: "none" | "residual" | "warp": a U-Net whose output head of that mode changes the
      landmark-warped image; the head's settings (max_displacement, warp_colour,
      flow_smoothness) are those of `OutputOptions`.
    - ngf, lr, beta1, beta2, lambda_l1: the U-Net's width, Adam settings and L1 weight.
    """

    shape_components: int = 8
    ridge: float = 0.01
    robust: bool = False
    align: bool = False
    support: Literal["region", "all"] = "all"
    calibrate: bool = True
    smoothing: float = 0.001
    feather: float = 0.3
    refine: Literal["none", "residual", "warp"] = "none"
    ngf: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_l1: float = 100.0
    max_displacement: float = 0.05
    warp_colour: float = 0.05
    flow_smoothness: float = 1.0

    def __post_init__(self) -> None:
        check_at_least("shape_components", self.shape_components, 0)
        check_at_least("ridge", self.ridge, 0)
        check_at_least("smoothing", self.smoothing, 0)
        check_positive("feather", self.feather)
        check_at_least("ngf", self.ngf, 1)
        check_positive("lr", self.lr)
        check_at_least("lambda_l1", self.lambda_l1, 0)
        check_positive("max_displacement", self.max_displacement)
        check_at_least("warp_colour", self.warp_colour, 0)
        check_at_least("flow_smoothness", self.flow_smoothness, 0)


class LandmarkFields(nn.Module):
    """The fitted model as buffers, so checkpoints hold it: mean_shape (956,), basis (K, 956),
    fields (P, 1 + K, 956), gains (P,) (each procedure's calibrated factor) and fitted (a 0/1
    flag). Fields are zero until `fit`; zero fields move nothing."""

    def __init__(self, procedures: int, components: int) -> None:
        super().__init__()
        size = 2 * mesh.POINTS
        self.register_buffer("mean_shape", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("basis", torch.zeros(components, size, dtype=torch.float64))
        self.register_buffer("fields", torch.zeros(procedures, 1 + components, size, dtype=torch.float64))
        self.register_buffer("gains", torch.ones(procedures, dtype=torch.float64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.float64))

    def load(self, fitted: Fields, gains: np.ndarray) -> None:
        with torch.no_grad():
            self.mean_shape.copy_(torch.from_numpy(fitted.mean_shape))
            self.basis.copy_(torch.from_numpy(fitted.basis))
            self.fields.copy_(torch.from_numpy(fitted.fields))
            self.gains.copy_(torch.from_numpy(np.asarray(gains, np.float64)))
            self.fitted.fill_(1.0)

    def arrays(self) -> Fields:
        return Fields(self.mean_shape.detach().cpu().numpy(), self.basis.detach().cpu().numpy(),
                      self.fields.detach().cpu().numpy(), float("nan"), 0)


@dataclass
class Move:
    """One face's simulated motion at some image size: the landmarks before and after, the
    face's frame, and the ticked procedures' region (polygons in that image's pixels)."""

    source: np.ndarray
    target: np.ndarray
    frame: FaceFrame
    regions: list[list[np.ndarray]] = field(default_factory=list)  # per ticked procedure, its polygons

    def scaled(self, factor: float) -> "Move":
        """The same motion in an image `factor` times as large."""
        frame = FaceFrame(self.frame.centre * factor, self.frame.unit * factor, self.frame.rotation)
        return Move(self.source * factor, self.target * factor, frame,
                    [[p * factor for p in polygons] for polygons in self.regions])

    @property
    def polygons(self) -> list[np.ndarray]:
        return [polygon for polygons in self.regions for polygon in polygons]


@register_family
class LandmarkWarp(ModelFamily):
    """Networks: ``landmarks`` (the fitted fields, buffers only) and, with `refine`, ``G``.

    No phase without `refine` (the fit is the whole of training); with it, one phase trains
    ``G`` on L1 to the after photo.
    """

    name = "landmark-warp"
    Options = LandmarkWarpOptions
    paired = True
    uses = frozenset({"procedures", "intensity", "landmarks"})
    description = "landmark-driven warp: per-procedure landmark fields fitted in closed form, thin-plate-spline warp"

    def __init__(self, options: LandmarkWarpOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        if not self.procedures:
            raise SvaiError("landmark-warp needs at least one procedure (data.procedures is empty)")
        self.head = OutputHead(OutputOptions(output=options.refine, max_displacement=options.max_displacement,
                                             warp_colour=options.warp_colour,
                                             flow_smoothness=options.flow_smoothness)) \
            if options.refine != "none" else None
        if self.head is not None and (image_size & (image_size - 1) or image_size < 32):
            raise SvaiError(f"landmark-warp with model.refine needs a power-of-two image size of at least 32; "
                            f"got {image_size}")

    # -- building -----------------------------------------------------------------------
    def build(self) -> Networks:
        o = self.options
        nets: Networks = {"landmarks": LandmarkFields(len(self.procedures), o.shape_components)}
        if self.head is not None:
            generator = UnetGenerator(in_channels=3 + len(self.procedures), out_channels=self.head.channels,
                                      depth=min(7, (self.image_size & -self.image_size).bit_length() - 1),
                                      ngf=o.ngf, norm="batch", dropout=0.0, final_tanh=False)
            init_weights(generator)
            self.head.initialise(generator.output_layer)
            nets["G"] = generator
        return nets

    def inference_networks(self) -> tuple[str, ...]:
        return ("landmarks", "G") if self.head is not None else ("landmarks",)

    # -- fitting and training --------------------------------------------------------------
    def fit(self, nets: Networks, data) -> dict[str, float]:  # type: ignore[no-untyped-def]
        """Fit the landmark fields on the training split's stored landmarks (see the module)."""
        table = data.landmark_table()
        if table is None or len(table.ids) == 0:
            raise SvaiError(f"{data.root}: landmark-warp needs the pairs' face landmarks, and the train split has "
                            "none: run `svai prepare` again with the face layer installed (svai[face], "
                            "`svai weights`)")
        with single_thread():
            return self._fit(nets, data, table)

    def _fit(self, nets: Networks, data, table) -> dict[str, float]:  # type: ignore[no-untyped-def]
        o = self.options
        settings = FitSettings(components=o.shape_components, ridge=o.ridge, robust=o.robust, align=o.align,
                               support=o.support == "region")
        fitted = fit_fields(table.before, table.after, table.procedures, self.procedures, settings)
        gains = self._calibrate(fitted, data, table) if o.calibrate else np.ones(len(self.procedures))
        nets["landmarks"].load(fitted, gains)
        log.info("landmark fields fitted on %d pairs; they explain %.1f %% of the landmark motion; gains %s",
                 fitted.pairs, 100 * fitted.explained, ", ".join(f"{p} {g:g}" for p, g in zip(self.procedures, gains)))
        return {"fit_pairs": float(fitted.pairs), "fit_explained": fitted.explained,
                **{f"gain_{p}": float(g) for p, g in zip(self.procedures, gains)}}

    def phases(self) -> list[Phase]:
        if self.head is None:
            return []
        o = self.options
        return [Phase("G", ("G",), o.lr, (o.beta1, o.beta2))]

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: StepContext, step: int) -> LossResult:
        """``G``: λ·L1(refined, after) + the head's regularisers; the landmark warp itself is fixed."""
        if phase != "G" or self.head is None:
            raise ValueError(f"landmark-warp has no phase {phase!r}")
        before, after = batch["before"], batch["after"]
        procedures = batch["procedures"].float()
        landmarks = batch.get("landmarks")
        request = Request(procedures=procedures, landmarks=landmarks)
        with torch.no_grad(), single_thread():
            moves = self._moves(nets, before, request)
            warped, weight = self._warp_all(before, moves)
        raw = nets["G"](tile_labels(warped.to(before.dtype), procedures))
        refined, aux = self.head(raw, warped)
        out = warped + weight * (refined - warped)
        l1 = F.l1_loss(out.float(), after.float())
        head_loss, head_logs = self.head.regularizer(aux)
        total = self.options.lambda_l1 * l1 + head_loss
        return total, {"G_l1": l1.item(), **head_logs, "G": total.item()}

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        """before: (B, 3, S, S) in [-1, 1] -> after, same shape, float32.

        request: procedures (B or 1, P) strengths, intensity α in [0, 1] (default 1; 0 returns
        the input bit for bit) and landmarks (B, 478, 2) in before's pixels (NaN rows: no face);
        without landmarks the face layer looks for them on the images.
        """
        return torch.cat(self.translate_at(nets, before, request, [before[i:i + 1] for i in range(before.shape[0])]))

    def moves_pixels(self) -> bool:
        return True

    @torch.no_grad()
    def translate_at(self, nets: Networks, before: torch.Tensor, request: Request | None,
                     photos: list[torch.Tensor]) -> list[torch.Tensor]:
        """The simulation applied to each photo at its own size: the landmarks (given in
        before's pixels) are scaled to the photo, and the warp and its region are computed
        there, so the photo's own pixels move."""
        check_before(before)
        alpha = self.intensity(request)
        if alpha == 0.0:
            return [photo.float().clone() for photo in photos]
        # Small tensors and a few hundred unknowns: one thread (see `svai.threads`).
        with single_thread():
            return self._translate_at(nets, before, request, photos, alpha)

    def _translate_at(self, nets: Networks, before: torch.Tensor, request: Request | None,
                      photos: list[torch.Tensor], alpha: float | None) -> list[torch.Tensor]:
        moves = self._moves(nets, before, request)
        scales = [photo.shape[-1] / before.shape[-1] for photo in photos]
        outputs = []
        for index, (photo, move, scale) in enumerate(zip(photos, moves, scales)):
            if photo.shape[-2] * before.shape[-1] != photo.shape[-1] * before.shape[-2]:
                raise ValueError(f"photo {tuple(photo.shape)} is not before {tuple(before.shape)} resized")
            scaled = None if move is None else move.scaled(scale)
            warped, box, local = self._warp_one(photo.float(), scaled)
            if self.head is not None and box is not None:
                # At the model's own size the photo's warp is the model input's.
                same = scale == 1.0 and torch.equal(photo.float(), before[index:index + 1].float())
                small = warped if same else self._warp_all(before[index:index + 1], [move])[0]
                labels = self.requested_procedures(request, before)[index:index + 1]
                raw = nets["G"](tile_labels(small.to(before.dtype), labels))
                refined = self.head.at_size(raw, small, warped, alpha)
                weight = torch.zeros(1, 1, *warped.shape[2:], device=warped.device)
                x0, y0, x1, y1 = box
                weight[0, 0, y0:y1, x0:x1] = torch.from_numpy(local)
                warped = (warped + weight * (refined - warped)).clamp(-1, 1)
            # The warp alone resamples the photo's own values: already within [-1, 1].
            outputs.append(warped)
        return outputs

    # -- the warp -----------------------------------------------------------------------
    def _moves(self, nets: Networks, before: torch.Tensor, request: Request | None) -> list[Move | None]:
        """Each image's motion in before's pixels, or None where it has no face or nothing to move."""
        strengths = self.requested_procedures(request, before).cpu().numpy().astype(np.float64)
        alpha = self.intensity(request)
        strengths = strengths * (1.0 if alpha is None else alpha)
        fitted = nets["landmarks"]
        if not bool(fitted.fitted):
            return [None] * before.shape[0]
        landmarks = request.landmarks if request is not None else None
        if landmarks is None:
            from svai.models.face_input import detect_landmarks

            points = detect_landmarks(before)
        else:
            points = [np.asarray(row, np.float64) for row in landmarks.detach().cpu().float().numpy()]
            if len(points) != before.shape[0]:
                raise ValueError(f"landmarks for {len(points)} images; before has {before.shape[0]}")
        fields, gains = fitted.arrays(), fitted.gains.detach().cpu().numpy()
        return [self._move(fields, found, row * gains) for row, found in zip(strengths, points)]

    def _move(self, fields: Fields, landmarks: np.ndarray | None, strengths: np.ndarray,
              ticked: list[str] | None = None) -> Move | None:
        """A face's motion for (P,) strengths (gains applied), its region that of `ticked`
        (default: the procedures with a strength above 0); None without a face or a procedure."""
        ticked = ticked if ticked is not None else [p for p, s in zip(self.procedures, strengths) if s > 0]
        if not ticked or not landmarks_found(landmarks):
            return None
        frame = face_frame(landmarks)
        shift = fields.displacement(frame.to_frame(landmarks), strengths)
        target = landmarks + frame.vectors_to_photo(shift)
        return Move(landmarks, target, frame, [procedure_polygons(landmarks, p) for p in ticked])

    def _flow(self, move: Move | None, width: int, height: int) -> tuple[Box, np.ndarray, np.ndarray] | None:
        """(box, region weight (h, w), backward field (2, h, w) pixels, weighted) of a move in
        an image of this size; None when nothing moves."""
        box = None if move is None else region_box(move.polygons, width, height)
        if move is None or box is None:
            return None
        weight = region_weight(move.regions, box, self.options.feather * move.frame.unit)
        field = backward_field(move.source, move.target, move.frame, box, (width, height), self.options.smoothing)
        return box, weight, field * weight[None]

    def _warp_one(self, image: torch.Tensor, move: Move | None) -> tuple[torch.Tensor, Box | None, np.ndarray]:
        """Warp one image (1, 3, H, W) float32 by its move (in the image's pixels) -> (warped
        (1, 3, H, W), the box that changed or None, the region weight inside it (h, w))."""
        flow = self._flow(move, image.shape[3], image.shape[2])
        if flow is None:
            return image, None, np.zeros((0, 0), np.float32)
        box, local, field = flow
        return resample_box(image, torch.from_numpy(field), box), box, local

    def _warp_all(self, images: torch.Tensor, moves: list[Move | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp each image (B, 3, H, W) by its move (moves in the images' own pixels) ->
        (warped (B, 3, H, W) float32, region weight (B, 1, H, W) in [0, 1])."""
        outputs, weights = [], []
        for image, move in zip(images, moves):
            warped, box, local = self._warp_one(image[None].float(), move)
            weight = torch.zeros(1, 1, *image.shape[1:], device=image.device)
            if box is not None:
                x0, y0, x1, y1 = box
                weight[0, 0, y0:y1, x0:x1] = torch.from_numpy(local)
            outputs.append(warped)
            weights.append(weight)
        return torch.cat(outputs), torch.cat(weights)

    # -- calibration --------------------------------------------------------------------
    def _calibrate(self, fields: Fields, data, table) -> np.ndarray:  # type: ignore[no-untyped-def]
        """Each procedure's gain: the factor on its field whose warp best reproduces the
        training after photos (least squared error over the ticked regions, on up to
        `CALIBRATION_PAIRS` pairs with that procedure, alone where enough pairs have it alone).

        The landmarker reads some changes only in part (a drawn nose narrowed by a third
        moves its alar landmarks by a fraction of that); the pixels say how far to go. The
        field is taken as linear in the gain (the warp of f_rest + g·(f_all − f_rest), f_rest
        the field without the procedure), which holds for the small motions of surgery.
        """
        count = len(self.procedures)
        gains = np.ones(count)
        index_of = {record.id: i for i, record in enumerate(data.records)}
        for p in range(count):
            having = table.procedures[:, p] > 0
            alone = having & ((table.procedures > 0).sum(axis=1) == 1)
            rows = np.flatnonzero(alone if alone.sum() >= MIN_ALONE else having)
            if not len(rows):
                continue
            rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), CALIBRATION_PAIRS)).round().astype(int)]
            errors = np.zeros(len(GAIN_GRID))
            for row in rows:
                item = data[index_of[table.ids[row]]]
                before, after = item["before"][None].float(), item["after"][None].float()
                height, width = before.shape[2:]
                strengths = table.procedures[row] * gains
                ticked = [name for name, s in zip(self.procedures, strengths) if s > 0]
                with_p = strengths.copy()
                with_p[p] = table.procedures[row, p]
                without_p = with_p.copy()
                without_p[p] = 0.0
                full = self._flow(self._move(fields, table.before[row], with_p, ticked), width, height)
                if full is None:
                    continue
                box, weight, field_all = full
                field_rest = np.zeros_like(field_all)
                if (without_p > 0).any():
                    # Same face and ticked regions, so the same box and weight: only the targets differ.
                    rest = self._move(fields, table.before[row], without_p, ticked)
                    field_rest = backward_field(rest.source, rest.target, rest.frame, box, (width, height),
                                                self.options.smoothing) * weight[None]
                x0, y0, x1, y1 = box
                target = after[:, :, y0:y1, x0:x1]
                for k, gain in enumerate(GAIN_GRID):
                    field = torch.from_numpy(field_rest + gain * (field_all - field_rest))
                    warped = resample_box(before, field, box)[:, :, y0:y1, x0:x1]
                    errors[k] += float(((warped - target) ** 2).sum())
            gains[p] = GAIN_GRID[int(np.argmin(errors))]
        return gains
