"""Loading evaluation JSON files into table rows, and the provenance those rows carry.

The input is the evaluation JSON that `svai evaluate` writes, one per run. Every run may embed
a *baseline*: the same metrics computed with the unedited before image as the prediction, the
"do nothing" answer a model has to beat. A row is one model or one baseline.

Rows are the JSON objects themselves (shallow copies, inputs never modified) with a few keys
added, all starting with an underscore:

- ``_source``: the JSON file the row came from;
- ``_label``: the unique name shown in tables and grids (``name``, plus a hint when two runs
  share a name);
- ``_baseline``: for a model, the ``_label`` of the baseline it is compared with, else None;
- ``_notes``: extra remarks found while loading (for example two baselines that disagree).

A model row read from a run folder also carries ``environment``: what the run's
``environment.json`` says reproduces it (versions, commit, device, precision, seed, command).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from svai.environment import difference_lines, read_environment
from svai.errors import SvaiError
from svai.run import EVALUATION_FILE as RESULT_FILE
# The folders a result names; relative ones are read relative to the JSON file.
DIRS: tuple[str, ...] = ("pred", "target", "masks", "before")


def load_results(paths: Sequence[Path]) -> list[dict]:
    """Read run folders or evaluation JSON files into table rows, baselines included.

    A path is a run folder holding ``evaluation.json`` or a JSON file. A baseline embedded in
    several files with the same pred and target folders becomes one row, and so does a file
    whose ``role`` is ``"baseline"`` for those folders. The same file given twice is read once.
    Relative folder paths inside a JSON are taken relative to that JSON's folder.
    """
    if not paths:
        raise SvaiError("nothing to compare: give one or more run folders or evaluation JSON files")
    rows: list[dict] = []
    seen: set[Path] = set()
    for path in paths:
        file = _result_file(Path(path))
        if file.resolve() in seen:
            continue
        seen.add(file.resolve())
        rows.extend(_rows_from_result(_read_result(file), file))
    rows = _dedupe_baselines(rows)
    _label_rows(rows)
    _link_baselines(rows)
    return rows


def as_number(value: Any) -> float | None:
    """A finite or infinite float; None for missing, NaN, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _result_file(path: Path) -> Path:
    if not path.exists():
        raise SvaiError(f"{path} does not exist: give a run folder holding {RESULT_FILE} or an evaluation JSON file")
    if path.is_dir():
        file = path / RESULT_FILE
        if not file.is_file():
            raise SvaiError(
                f"{path} is a folder without {RESULT_FILE}: run `svai evaluate ... --json {file}` first, "
                "or give the evaluation JSON file itself"
            )
        return file
    return path


# An evaluation JSON of thousands of images is a few MB; far more is not one.
MAX_RESULT_BYTES = 256 << 20


def _read_result(file: Path) -> dict:
    try:
        if file.stat().st_size > MAX_RESULT_BYTES:
            raise SvaiError(f"{file}: {file.stat().st_size} bytes is too big for an evaluation JSON; "
                            "give the file `svai evaluate --json` wrote")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SvaiError(f"{file}: cannot read it ({error}); give an evaluation JSON from `svai evaluate`") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SvaiError(
            f"{file}: not valid JSON (line {error.lineno}: {error.msg}); give an evaluation JSON from `svai evaluate`"
        ) from None
    except RecursionError:
        raise SvaiError(f"{file}: nested too deeply to be an evaluation JSON; give the file `svai evaluate --json` "
                        "wrote") from None
    _check_result(data, file, "")
    if data.get("baseline") is not None:
        _check_result(data["baseline"], file, "baseline ")
    return data


# What each field of an evaluation JSON may hold when it is there (None is always allowed):
# a type, or a list/dict of a type. A file edited into another shape is refused by name.
_NUMBER = (int, float)
_RESULT_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": ((str, int, float), "a name"),
    "role": (str, "a string"),
    "svai_version": (str, "a string"),
    "pred": (str, "a folder path"), "target": (str, "a folder path"),
    "masks": (str, "a folder path"), "before": (str, "a folder path"),
    "unavailable": (dict, "an object of reasons"),
    "unmatched": (dict, 'an object {"pred_only": [...], "target_only": [...]}'),
    "skipped": (list, 'a list of {"file", "reason"} objects'),
    "settings": (dict, "an object"), "weights": (dict, "an object"), "versions": (dict, "an object"),
}
_METRIC_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "mean": (_NUMBER, "a number"), "std": (_NUMBER, "a number"),
    "n": (int, "a whole number"), "n_target": (int, "a whole number"), "identical": (int, "a whole number"),
    "higher_is_better": (bool, "true or false"), "warning": (str, "a string"),
    "per_image": (dict, "an object of numbers"),
}


def _check_result(data: Any, file: Path, what: str) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise SvaiError(
            f'{file}: not an svai evaluation JSON (its {what}object has no "metrics"); '
            "give the file `svai evaluate --json` wrote"
        )
    for key, (kind, described) in _RESULT_FIELDS.items():
        _check_field(data.get(key), kind, f'{what}"{key}"', described, file)
    unmatched = data.get("unmatched") or {}
    for side in ("pred_only", "target_only"):
        value = unmatched.get(side)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise SvaiError(f'{file}: {what}"unmatched.{side}" must be a list of file names; re-run `svai evaluate`')
    if not all(isinstance(item, dict) for item in data.get("skipped") or []):
        raise SvaiError(f'{file}: {what}"skipped" must be a list of {{"file", "reason"}} objects; re-run `svai evaluate`')
    for name, entry in data["metrics"].items():
        if not isinstance(entry, dict):
            raise SvaiError(f'{file}: {what}metric "{name}" is not an object with "mean"; re-run `svai evaluate`')
        for key, (kind, described) in _METRIC_FIELDS.items():
            _check_field(entry.get(key), kind, f'{what}metric "{name}" "{key}"', described, file)
    role = data.get("role", "model")
    if role not in ("model", "baseline"):
        raise SvaiError(f'{file}: unknown role {role!r}: expected "model" or "baseline"')


def _check_field(value: Any, kind: type | tuple[type, ...], where: str, described: str, file: Path) -> None:
    if value is None:
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON's true/false are not numbers here, and a count is whole.
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds):
        raise SvaiError(f"{file}: {where} must be {described}, not {json.dumps(value)[:40]}; "
                        "give the file `svai evaluate --json` wrote, unedited")


def read_paths(rows: list[dict], before: Path | None = None) -> dict[str, Path]:
    """Every file and folder `compare` reads for these rows, by what names it: the result
    files and the folders they name (and `--before`). No output may land on one of them."""
    paths: dict[str, Path] = {}
    for row in rows:
        paths[f"the result {row['_source']}"] = Path(row["_source"])
        for key in DIRS:
            if row.get(key):
                paths[f"the {key} folder of {row['_label']!r}"] = Path(row[key])
    if before is not None:
        paths["--before"] = Path(before)
    return paths


def _rows_from_result(data: dict, file: Path) -> list[dict]:
    row = {key: value for key, value in data.items() if key != "baseline"}
    row["role"] = data.get("role") or "model"
    row["name"] = str(data.get("name") or _default_name(file, row["role"]))
    row["_source"] = str(file)
    _resolve_dirs(row, file.parent)
    if row["role"] == "model" and file.name == RESULT_FILE:
        _attach_environment(row, file.parent)
    embedded = data.get("baseline")
    if embedded is None:
        return [row]
    baseline = dict(embedded)
    baseline["role"] = "baseline"
    baseline["name"] = str(embedded.get("name") or "baseline")
    # An embedded baseline was scored by the same run, so it shares that run's settings.
    for key in ("svai_version", "settings", "weights", "versions"):
        if baseline.get(key) is None and data.get(key) is not None:
            baseline[key] = data[key]
    baseline["_source"] = str(file)
    _resolve_dirs(baseline, file.parent)
    row["_baseline_key"] = _dir_key(baseline)
    return [row, baseline]


def _attach_environment(row: dict, run_dir: Path) -> None:
    """The run's first start as `environment`; resumes are counted, not listed."""
    record = read_environment(run_dir)
    if record is None:
        return
    environment = {key: value for key, value in record.items() if key != "resumes"}
    if record.get("resumes"):
        environment["resumes"] = len(record["resumes"])
    row["environment"] = environment


def environment_differences(rows: list[dict]) -> list[str]:
    """One line per reproducibility field (svai and library versions, commit, device,
    precision, seed …) whose value differs between the model rows that record one."""
    return difference_lines({row["_label"]: row.get("environment") for row in rows if row["role"] != "baseline"})


def _default_name(file: Path, role: str) -> str:
    if role == "baseline":
        return "baseline"
    return file.parent.name if file.name == RESULT_FILE else file.stem


def _resolve_dirs(row: dict, base: Path) -> None:
    for key in DIRS:
        value = row.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            row[key] = os.path.normpath(path if path.is_absolute() else base / path)
        else:
            row[key] = None


def _dir_key(row: dict) -> tuple[str | None, str | None]:
    return row.get("pred"), row.get("target")


def _dedupe_baselines(rows: list[dict]) -> list[dict]:
    kept: list[dict] = []
    first_for: dict[tuple, dict] = {}
    for row in rows:
        if row["role"] != "baseline":
            kept.append(row)
            continue
        first = first_for.get(_dir_key(row))
        if first is None:
            first_for[_dir_key(row)] = row
            kept.append(row)
        elif _means(first) != _means(row):
            first.setdefault("_notes", []).append(
                f"another baseline for the same folders ({row['_source']}) has different numbers "
                f"(other settings?); this row shows the one from {first['_source']}"
            )
    return kept


def _means(row: dict) -> dict[str, float | None]:
    return {name: as_number(entry.get("mean")) for name, entry in row["metrics"].items()}


def _label_rows(rows: list[dict]) -> None:
    by_name: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        row["_label"] = row["name"]
        by_name[row["name"]].append(row)
    for name, group in by_name.items():
        if len(group) > 1:
            for row, label in zip(group, _distinct_labels(name, group)):
                row["_label"] = label
    # A hint could still collide with another run's literal name; numbering settles it.
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["_label"]] += 1
        if counts[row["_label"]] > 1:
            row["_label"] = f"{row['_label']} #{counts[row['_label']]}"


def _distinct_labels(name: str, group: list[dict]) -> list[str]:
    """Add the shortest trailing part of a path that tells same-named rows apart."""
    hints = [_hint_path(row, group) for row in group]
    for depth in range(1, max(len(hint.parts) for hint in hints) + 1):
        labels = [f"{name} ({'/'.join(hint.parts[-depth:])})" for hint in hints]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{name} #{index}" for index in range(1, len(group) + 1)]


def _hint_path(row: dict, group: list[dict]) -> Path:
    if row["role"] == "baseline":
        targets = {other.get("target") for other in group}
        return Path((row.get("target") if len(targets) == len(group) else row.get("pred")) or "?")
    source = Path(row["_source"])
    return source.parent if source.name == RESULT_FILE else source.with_suffix("")


def _link_baselines(rows: list[dict]) -> None:
    baselines = [row for row in rows if row["role"] == "baseline"]
    by_dirs = {_dir_key(row): row for row in baselines}
    for row in rows:
        key = row.pop("_baseline_key", None)
        if row["role"] == "baseline":
            row["_baseline"] = None
            continue
        match = by_dirs.get(key) or next((b for b in baselines if b.get("target") == row.get("target")), None)
        row["_baseline"] = match["_label"] if match else None


# --------------------------------------------------------------------------------------------
# Provenance: how each row was computed, flattened for side-by-side display


_FIXED_KEYS = ("role", "source", *DIRS, "svai_version")


def settings_rows(rows: list[dict], labels: list[str]) -> list[tuple[str, list[str]]]:
    """(key, one value per label) for the provenance table; nested settings flattened with dots."""
    by_label = {row["_label"]: row for row in rows}
    flat = [_provenance(by_label[label]) for label in labels if label in by_label]
    found = dict.fromkeys(key for values in flat for key in values)
    keys = [key for key in _FIXED_KEYS if key in found] + [key for key in found if key not in _FIXED_KEYS]
    return [(key, [values.get(key, "") for values in flat]) for key in keys]


def differing_settings(rows: list[dict]) -> list[str]:
    """settings.* and weights.* keys whose values differ between rows that state them."""
    labels = [row["_label"] for row in rows]
    return [
        key for key, values in settings_rows(rows, labels)
        if key.startswith(("settings.", "weights.")) and len({v for v in values if v}) > 1
    ]


def _provenance(row: dict) -> dict[str, str]:
    values = {"role": row["role"], "source": row["_source"]}
    values.update({key: row[key] for key in DIRS if row.get(key)})
    if row.get("svai_version"):
        values["svai_version"] = row["svai_version"]
    for section in ("settings", "weights", "versions", "environment"):
        values.update(_flatten(row.get(section), section))
    unmatched = row.get("unmatched") or {}
    for key in ("pred_only", "target_only"):
        if unmatched.get(key):
            values[f"unmatched.{key}"] = str(len(unmatched[key]))
    if row.get("skipped"):
        values["skipped"] = str(len(row["skipped"]))
    return {key: str(value) for key, value in values.items()}


def _flatten(value: Any, prefix: str) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}"))
        return out
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        return {prefix: ", ".join(str(item) for item in value)}
    return {prefix: str(value)}
