"""Finding before/after pairs in a folder of photos or a CSV, with ids, subjects and labels.

Four ways a collection can say which photos belong together (`find_pairs(pairing=...)`):

- ``dirs``: a ``before/`` and an ``after/`` folder (also ``pre/post``, ``전/후``; any letter
  case) holding files with the same stem: ``clinicA/eyes/before/0012.jpg`` pairs with
  ``clinicA/eyes/after/0012.png``.
- ``names``: a role token at the end of the stem after ``_``, ``-``, ``.`` or a space:
  ``0012_before`` / ``0012_after``, ``pre`` / ``post``, ``b`` / ``a``, ``전`` / ``후``.
- ``side-by-side``: one image holding both, before on the left half (pix2pix "aligned").
- ``csv``: a table with columns ``before,after`` and optional ``subject,procedures,id``.

``auto`` applies the folder rule, then the name rule, to every file, and reads an image that
neither explains as a side-by-side composite when it is at least `COMPOSITE_ASPECT` times as
wide as it is tall. Every file that ends up in no pair is reported as a `Skip`.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

from svai.data.images import ImageProblem, probe, scan_images
from svai.data.layout import PROCEDURES, check_procedure_name, order_procedures
from svai.errors import SvaiError

PAIRING_MODES: tuple[str, ...] = ("auto", "dirs", "names", "side-by-side", "csv")
ORDERS: tuple[str, ...] = ("before-after", "after-before")

# A composite of two 3:4 portraits is 1.5:1; plain photos are at most ~1.33:1 (4:3) except
# panoramas and 16:9 landscapes, which `--pairing names|dirs` keeps out.
COMPOSITE_ASPECT: float = 1.45

_ROLE_TOKENS: dict[str, str] = {
    "before": "before", "pre": "before", "b": "before", "전": "before",
    "after": "after", "post": "after", "a": "after", "후": "after",
}
# Single letters are too common as folder names (CycleGAN's trainA/trainB) to mean a role.
_ROLE_FOLDERS: dict[str, str] = {k: v for k, v in _ROLE_TOKENS.items() if len(k) > 1 or not k.isascii()}
_TOKEN_PATTERN = re.compile(
    r"^(?P<base>.+?)[_\-. ](?P<token>" + "|".join(sorted(_ROLE_TOKENS, key=len, reverse=True)) + r")$",
    re.IGNORECASE,
)

# Folder names that label a pair's procedures, compared after `normalize_label`.
DEFAULT_LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "eyes": ("eyes",), "eye": ("eyes",), "eyelid": ("eyes",), "eyelids": ("eyes",),
    "blepharoplasty": ("eyes",), "doubleeyelid": ("eyes",), "눈": ("eyes",), "쌍꺼풀": ("eyes",),
    "nose": ("nose",), "rhinoplasty": ("nose",), "코": ("nose",),
    "jaw": ("jaw",), "chin": ("jaw",), "facialbones": ("jaw",), "vline": ("jaw",),
    "mandible": ("jaw",), "턱": ("jaw",),
}

# Bytes (UTF-8) of a pair id: with ".png" and a temporary prefix it stays far below the
# 255-byte name limit of common file systems.
MAX_ID_LENGTH = 120


@dataclass(frozen=True)
class Pair:
    """One before/after pair found in the source.

    `before` and `after` are the same file for a side-by-side composite; `swap` means the
    composite holds after on the left (`--order after-before`). `files` are the source files
    the pair depends on, for change detection.
    """

    id: str
    before: Path
    after: Path
    subject: str
    procedures: tuple[str, ...] = ()
    composite: bool = False
    swap: bool = False

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.before,) if self.composite else (self.before, self.after)


@dataclass(frozen=True)
class Skip:
    """A file (or CSV row) left out, with a short reason code and a human explanation."""

    file: str
    reason: str
    detail: str


@dataclass
class PairingResult:
    pairs: list[Pair]
    skipped: list[Skip]
    root: Path


# ---------------------------------------------------------------------------------------- names

def nfc(text: str) -> str:
    """NFC-normalise: macOS stores Hangul decomposed, which would hide `전`/`후` tokens."""
    return unicodedata.normalize("NFC", text)


def normalize_label(name: str) -> str:
    """Folder name -> alias key: case-folded, separators dropped ("Double_Eyelid" -> "doubleeyelid")."""
    return re.sub(r"[\s\-_.]+", "", nfc(name).casefold())


def safe_id_part(text: str) -> str:
    """Keep letters, digits and `_`; every other run becomes `-` (safe on every filesystem)."""
    text = nfc(text)
    cleaned = "".join(c if (c.isalnum() or c == "_") else "-" for c in text)
    return re.sub(r"-{2,}", "-", cleaned).strip("-_")


def make_id(parts: Iterable[str]) -> str:
    """Join path parts into a filesystem-safe pair id: ("clinicA", "eyes", "0012") -> "clinicA-eyes-0012".

    An id longer than `MAX_ID_LENGTH` bytes in UTF-8 (file systems count bytes: a Hangul
    letter takes three) is cut at a letter boundary and made unique with a digest.
    """
    pieces = [p for p in (safe_id_part(part) for part in parts) if p]
    pair_id = "-".join(pieces) or "pair"
    encoded = pair_id.encode("utf-8")
    if len(encoded) > MAX_ID_LENGTH:
        digest = hashlib.sha256(encoded).hexdigest()[:10]
        head = encoded[:MAX_ID_LENGTH - 11].decode("utf-8", "ignore").rstrip("-_")
        pair_id = f"{head}-{digest}"
    return pair_id


def split_role_token(stem: str) -> tuple[str, str] | None:
    """"0012_before" -> ("0012", "before"); "0012-후" -> ("0012", "after"); no token -> None."""
    match = _TOKEN_PATTERN.match(nfc(stem))
    if match is None:
        return None
    return match.group("base"), _ROLE_TOKENS[match.group("token").casefold()]


def folder_role(name: str) -> str | None:
    return _ROLE_FOLDERS.get(nfc(name).casefold())


# --------------------------------------------------------------------------------------- labels

def load_label_aliases(path: Path | None) -> dict[str, tuple[str, ...]]:
    """The default aliases, extended or overridden by a YAML mapping `folder name: procedure(s)`.

    ```yaml
    ptosis: eyes            # a new alias
    chin: null              # "chin" folders are no longer labels
    combo: [eyes, nose]     # one folder, two procedures
    ```
    """
    aliases = dict(DEFAULT_LABEL_ALIASES)
    if path is None:
        return aliases
    path = Path(path)
    from svai.config import read_yaml_file  # bounded effort, YAML 1.2, as every config

    if not path.is_file():
        raise SvaiError(f"--labels {path}: file not found")
    data = read_yaml_file(path, "--labels ")
    if data is None:
        return aliases
    if not isinstance(data, dict):
        raise SvaiError(f"--labels {path}: expected a mapping `folder name: procedure`, got {type(data).__name__}")
    for name, value in data.items():
        key = normalize_label(str(name))
        if not key:
            raise SvaiError(f"--labels {path}: empty folder name")
        if value is None or value == []:
            aliases.pop(key, None)
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SvaiError(f"--labels {path}: {name!r} must map to a procedure or a list of them")
        for value in values:
            try:
                check_procedure_name(value)
            except SvaiError as error:
                raise SvaiError(f"--labels {path}: {name!r} maps to an invalid {error}") from None
        # A name outside the defaults (lips, facelift …) adds a procedure to the vocabulary.
        aliases[key] = order_procedures(values)
    return aliases


def labels_from_folders(folders: Iterable[str], aliases: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Procedures named by any folder in a pair's relative path, in vocabulary order."""
    found: set[str] = set()
    for folder in folders:
        found.update(aliases.get(normalize_label(folder), ()))
    return order_procedures(found)


# ------------------------------------------------------------------------------------- scanning

def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def scan_files(root: Path) -> tuple[list[Path], list[Skip]]:
    """Every image file under `root` (sorted) and a `Skip` for every other visible file
    (`svai.data.images.scan_images`, the listing every command shares)."""
    listing = scan_images(root)
    return listing.images, [Skip(_display(p.path, root), p.reason, p.detail) for p in listing.passed_over]


def _composite_or_skip(path: Path, root: Path) -> tuple[bool, Skip | None]:
    """Whether an unexplained file is a side-by-side composite; a `Skip` when it is not."""
    try:
        info = probe(path)
    except ImageProblem as problem:
        return False, Skip(_display(path, root), problem.reason, problem.detail)
    if info.width >= COMPOSITE_ASPECT * info.height:
        return True, None
    return False, Skip(
        _display(path, root), "unpaired",
        "no before/after folder or name token, and too narrow for a side-by-side composite "
        f"({info.width}x{info.height})",
    )


def find_pairs(
    source: Path,
    pairing: str = "auto",
    *,
    pairs_csv: Path | None = None,
    order: str = "before-after",
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> PairingResult:
    """Find every pair under `source` (a folder, or a CSV file) and every file left out.

    Pairs come back sorted by id; a pair id that repeats (compared case-insensitively, as
    macOS and Windows do) keeps its first pair and reports the others as "duplicate id".
    """
    source = Path(source)
    if pairing not in PAIRING_MODES:
        raise SvaiError(f"--pairing must be one of {', '.join(PAIRING_MODES)}; got {pairing!r}")
    if order not in ORDERS:
        raise SvaiError(f"--order must be one of {', '.join(ORDERS)}; got {order!r}")
    aliases = DEFAULT_LABEL_ALIASES if aliases is None else aliases
    if not source.exists():
        raise SvaiError(f"{source} does not exist: give a folder of photos or a CSV of pairs")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise SvaiError(f"{source} is a file but not a .csv: give a folder of photos or a CSV of pairs")
        if pairing not in ("auto", "csv"):
            raise SvaiError(f"--pairing {pairing} needs a folder, but {source} is a CSV file")
        if pairs_csv is not None:
            raise SvaiError("--pairs is for a folder SOURCE; here SOURCE is already a CSV")
        return _pairs_from_csv(source, source.parent, aliases)
    if pairs_csv is not None or pairing == "csv":
        if pairs_csv is None:
            raise SvaiError("--pairing csv needs a CSV: give it as SOURCE or with --pairs FILE.csv")
        if pairing not in ("auto", "csv"):
            raise SvaiError(f"--pairs reads pairs from a CSV; it cannot be combined with --pairing {pairing}")
        if not Path(pairs_csv).is_file():
            raise SvaiError(f"--pairs {pairs_csv}: file not found")
        return _pairs_from_csv(Path(pairs_csv), source, aliases)
    return _pairs_from_folder(source, pairing, order, aliases)


def _pairs_from_folder(root: Path, pairing: str, order: str, aliases: Mapping[str, tuple[str, ...]]) -> PairingResult:
    images, skipped = scan_files(root)
    # key -> role -> files; key = (folders without the role folder, stem without the token)
    groups: dict[tuple[tuple[str, ...], str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    composites: list[Path] = []
    for path in images:
        folders = path.relative_to(root).parts[:-1]
        stem = nfc(path.stem)
        roles = [(i, folder_role(f)) for i, f in enumerate(folders)]
        role_folders = [(i, r) for i, r in roles if r is not None]
        if pairing in ("auto", "dirs") and role_folders:
            index, role = role_folders[-1]  # the innermost role folder decides
            key_folders = tuple(nfc(f) for f in folders[:index] + folders[index + 1:])
            token = split_role_token(stem)
            # before/0012_before.jpg pairs with after/0012_after.jpg: a token that agrees
            # with its folder is redundant, one that disagrees is part of the name.
            key_stem = token[0] if token is not None and token[1] == role else stem
            groups[(key_folders, key_stem)][role].append(path)
            continue
        token = split_role_token(stem) if pairing in ("auto", "names") else None
        if token is not None:
            base, role = token
            groups[(tuple(nfc(f) for f in folders), base)][role].append(path)
            continue
        if pairing == "side-by-side":
            composites.append(path)
        elif pairing == "auto":
            is_composite, skip = _composite_or_skip(path, root)
            if is_composite:
                composites.append(path)
            elif skip is not None:
                skipped.append(skip)
        else:
            why = "not inside a before/ or after/ folder" if pairing == "dirs" else "no before/after token at the end of its name"
            skipped.append(Skip(_display(path, root), "unpaired", why))

    pairs: list[Pair] = []
    for (folders, base), roles in sorted(groups.items()):
        befores, afters = roles.get("before", []), roles.get("after", [])
        if len(befores) > 1 or len(afters) > 1:
            for path in befores + afters:
                skipped.append(Skip(_display(path, root), "ambiguous",
                                    f"{len(befores)} before and {len(afters)} after files share the name {base!r}"))
            continue
        if not afters or not befores:
            present, missing = (befores[0], "after") if befores else (afters[0], "before")
            skipped.append(Skip(_display(present, root), f"missing {missing}", f"no {missing} photo for {base!r}"))
            continue
        pair_id = make_id((*folders, base))
        pairs.append(Pair(pair_id, befores[0], afters[0], subject=pair_id,
                          procedures=labels_from_folders(folders, aliases)))
    for path in composites:
        folders = path.relative_to(root).parts[:-1]
        pair_id = make_id((*folders, path.stem))
        pairs.append(Pair(pair_id, path, path, subject=pair_id, procedures=labels_from_folders(folders, aliases),
                          composite=True, swap=order == "after-before"))
    return _dedupe(pairs, skipped, root)


def share_subjects(pairs: list[Pair]) -> list[Pair]:
    """Pairs that share a photo (the same file under two names through a hard or symbolic link,
    or a byte-identical copy) get one subject, so a split by subject keeps them on one side.

    Files are told apart by device and inode first, then, among files of equal size, by
    content; only files whose size another file shares are read.
    """
    identities: dict[Path, tuple] = {}
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in sorted({p for pair in pairs for p in pair.files}):
        try:
            info = path.stat()
        except OSError:
            continue
        identities[path] = ("inode", info.st_dev, info.st_ino)
        by_size[info.st_size].append(path)
    for paths in by_size.values():
        distinct = {identities[p] for p in paths}
        if len(distinct) < 2:
            continue
        for path in paths:
            try:
                identities[path] = ("content", hashlib.sha256(path.read_bytes()).hexdigest())
            except OSError:
                continue
    # Union of pairs through the photos they share; each group takes its smallest subject.
    parent: dict[str, str] = {}

    def find(subject: str) -> str:
        while parent.setdefault(subject, subject) != subject:
            parent[subject] = parent[parent[subject]]
            subject = parent[subject]
        return subject

    first_with: dict[tuple, str] = {}
    for pair in pairs:
        for path in pair.files:
            identity = identities.get(path)
            if identity is None:
                continue
            other = first_with.setdefault(identity, pair.subject)
            a, b = find(other), find(pair.subject)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [pair if find(pair.subject) == pair.subject else replace(pair, subject=find(pair.subject))
            for pair in pairs]


def _dedupe(pairs: list[Pair], skipped: list[Skip], root: Path) -> PairingResult:
    pairs = sorted(pairs, key=lambda p: (p.id.casefold(), str(p.before)))
    seen: dict[str, Pair] = {}
    kept: list[Pair] = []
    for pair in pairs:
        first = seen.get(pair.id.casefold())
        if first is not None:
            skipped.append(Skip(_display(pair.before, root), "duplicate id",
                                f"pair id {pair.id!r} is already used by {_display(first.before, root)}"))
            continue
        seen[pair.id.casefold()] = pair
        kept.append(pair)
    skipped.sort(key=lambda s: (s.file, s.reason))
    return PairingResult(kept, skipped, root)


# ------------------------------------------------------------------------------------------ csv

def _parse_csv_procedures(text: str, aliases: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    found: set[str] = set()
    # Procedures a --labels file introduced are as valid as the defaults.
    known = order_procedures([*PROCEDURES, *(p for names in aliases.values() for p in names)])
    for name in re.split(r"[+,;|\s]+", text.strip()):
        if not name:
            continue
        if name in known:
            found.add(name)
        elif normalize_label(name) in aliases:
            found.update(aliases[normalize_label(name)])
        else:
            raise ValueError(f"unknown procedure {name!r} (use {', '.join(known)} or a --labels alias)")
    return order_procedures(found)


def _id_parts(path: Path, root: Path) -> tuple[tuple[str, ...], str]:
    """(folders, base stem) of a file, relative to `root`, role folder and token removed."""
    relative = Path(os.path.relpath(path, root))
    folders = tuple(p for p in relative.parts[:-1] if p not in ("..", "."))
    role_index = [i for i, f in enumerate(folders) if folder_role(f)]
    if role_index:
        folders = folders[:role_index[-1]] + folders[role_index[-1] + 1:]
    token = split_role_token(path.stem)
    return folders, token[0] if token else nfc(path.stem)


def _pairs_from_csv(csv_path: Path, root: Path, aliases: Mapping[str, tuple[str, ...]]) -> PairingResult:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SvaiError(f"{csv_path}: cannot read the CSV ({error})") from None
    try:
        return _pairs_from_text(csv_path, text, root, aliases)
    except csv.Error as error:  # a field over the csv module's size limit, a stray quote
        raise SvaiError(f"{csv_path}: not a readable CSV ({error})") from None


def _pairs_from_text(csv_path: Path, text: str, root: Path, aliases: Mapping[str, tuple[str, ...]]) -> PairingResult:
    reader = csv.DictReader(text.splitlines())
    columns = {name.strip().casefold(): name for name in (reader.fieldnames or []) if name}
    missing = [c for c in ("before", "after") if c not in columns]
    if missing:
        raise SvaiError(f"{csv_path}: missing column {missing[0]!r} (needs before,after; optional subject,procedures,id)")
    base = csv_path.parent
    pairs: list[Pair] = []
    skipped: list[Skip] = []
    for line, row in enumerate(reader, start=2):
        def cell(name: str) -> str:
            return (row.get(columns[name]) or "").strip() if name in columns else ""

        where = f"{csv_path.name}:{line}"
        before_text, after_text = cell("before"), cell("after")
        if not before_text or not after_text:
            skipped.append(Skip(where, "bad row", "the before or after cell is empty"))
            continue
        before, after = (Path(t) if Path(t).is_absolute() else base / t for t in (before_text, after_text))
        absent = [(t, p) for t, p in ((before_text, before), (after_text, after)) if not p.is_file()]
        if absent:
            skipped.append(Skip(absent[0][0], "missing file", f"{where} names a file that does not exist"))
            continue
        try:
            procedures = _parse_csv_procedures(cell("procedures"), aliases)
        except ValueError as error:
            skipped.append(Skip(where, "bad row", str(error)))
            continue
        folders, stem = _id_parts(before, root)
        if not cell("procedures"):
            procedures = labels_from_folders(folders, aliases)
        pair_id = make_id([cell("id")]) if cell("id") else make_id((*folders, stem))
        pairs.append(Pair(pair_id, before, after, subject=cell("subject") or pair_id, procedures=procedures))
    return _dedupe(pairs, skipped, root)
