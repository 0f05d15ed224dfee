"""Pairing images of two folders by relative path without extension.

`pred/sub/007.png` pairs with `target/sub/007.jpg`: the id is `sub/007`. Files present on one
side only are listed, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from svai.data.images import no_images, scan_images
from svai.errors import SvaiError


def image_id(path: Path, root: Path) -> str:
    """The pairing id of `path` inside `root`: relative path, POSIX separators, no extension."""
    return path.relative_to(root).with_suffix("").as_posix()


def index_folder(root: Path, passed_over: dict[str, str] | None = None) -> dict[str, Path]:
    """Every image under `root` by id. Missing or empty folders and ambiguous ids are errors.

    Two files with one id (`a.png` and `a.jpg`) cannot be paired unambiguously, so the
    error names both. The files the listing passes over (`scan_images`) are added to
    `passed_over` (file -> reason) when it is given.
    """
    root = Path(root)
    listing = scan_images(root)
    if not listing.images:
        raise no_images(root, listing)
    if passed_over is not None:
        passed_over.update({str(p.path): f"{p.reason}: {p.detail}" for p in listing.passed_over})
    found: dict[str, Path] = {}
    for path in listing.images:
        key = image_id(path, root)
        if key in found:
            raise SvaiError(f"{found[key]} and {path} share the id {key!r}: keep one of them")
        found[key] = path
    return found


@dataclass
class Pairing:
    """Which ids two folders share, and the files found on one side only."""

    ids: list[str] = field(default_factory=list)
    pred_only: list[str] = field(default_factory=list)
    target_only: list[str] = field(default_factory=list)

    def unmatched(self) -> dict[str, list[str]]:
        return {"pred_only": list(self.pred_only), "target_only": list(self.target_only)}


def pair_ids(pred: dict[str, Path], target: dict[str, Path], pred_root: Path, target_root: Path) -> Pairing:
    """Match two `index_folder` results; unmatched entries are relative file paths, sorted."""
    shared = sorted(pred.keys() & target.keys())
    return Pairing(
        ids=shared,
        pred_only=sorted(pred[k].relative_to(pred_root).as_posix() for k in pred.keys() - target.keys()),
        target_only=sorted(target[k].relative_to(target_root).as_posix() for k in target.keys() - pred.keys()),
    )
