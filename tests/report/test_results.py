"""svai.report.results: evaluation JSON files become table rows; baselines, labels, bad inputs."""

from __future__ import annotations

import hashlib
import json

import pytest

from svai import report
from svai.errors import SvaiError


def test_embedded_baseline_shared_by_two_runs_is_one_row(runs):
    rows = report.load_results([runs["p2p"], runs["cg"]])
    assert [(r["_label"], r["role"]) for r in rows] == [
        ("pix2pix", "model"), ("baseline", "baseline"), ("cyclegan", "model"),
    ]
    assert all(r["_baseline"] == "baseline" for r in rows if r["role"] == "model")


def test_baseline_json_file_for_the_same_folders_is_deduplicated(runs, kit):
    standalone = runs["tmp"] / "baseline.json"
    standalone.write_text(json.dumps(kit.baseline_json(runs["before"], runs["after"])))
    rows = report.load_results([standalone, runs["p2p"], runs["cg"]])
    assert sum(r["role"] == "baseline" for r in rows) == 1


def test_same_file_given_as_folder_and_json_is_read_once(runs):
    rows = report.load_results([runs["p2p"], runs["p2p"] / "evaluation.json"])
    assert [r["_label"] for r in rows] == ["pix2pix", "baseline"]


def test_conflicting_baselines_for_the_same_folders_keep_the_first_with_a_note(runs, kit):
    other = kit.evaluation("cyclegan", kit.CYCLEGAN, runs["cg_out"], runs["after"], runs["before"],
                       kit.baseline_json(runs["before"], runs["after"], {**kit.BASELINE, "fid": (61.0, None)}))
    kit.write_run(runs["cg"], other)
    table = kit.table_for(runs)
    assert kit.row(table, "baseline").cells["fid"].mean == 60.0
    assert any("different numbers" in note for note in table.notes)


def test_different_targets_give_two_baselines_and_a_warning(runs, tmp_path, kit):
    other_after = kit.write_images(tmp_path / "data2" / "after", 5)
    cg = kit.evaluation("cyclegan", kit.CYCLEGAN, runs["cg_out"], other_after, runs["before"],
                    kit.baseline_json(runs["before"], other_after, {**kit.BASELINE, "fid": (70.0, None)}))
    kit.write_run(runs["cg"], cg)
    rows = report.load_results([runs["p2p"], runs["cg"]])
    baselines = [r["_label"] for r in rows if r["role"] == "baseline"]
    assert len(baselines) == 2 and len(set(baselines)) == 2
    links = {r["_label"]: r["_baseline"] for r in rows if r["role"] == "model"}
    assert links["pix2pix"] != links["cyclegan"] and set(links.values()) == set(baselines)
    table = report.comparison_table(rows)
    assert len(table.warnings) >= 1 and "not comparable" in table.warnings[0]
    # cyclegan fid 65 beats its own baseline (70), not pix2pix's (60).
    assert kit.row(table, "cyclegan").cells["fid"].vs_baseline == "better"


def test_two_runs_with_the_same_name_get_distinct_labels(runs, tmp_path, kit):
    copy = kit.write_run(tmp_path / "runs" / "p2p-long", json.loads((runs["p2p"] / "evaluation.json").read_text()))
    labels = [r["_label"] for r in report.load_results([runs["p2p"], copy])]
    assert labels == ["pix2pix (p2p)", "baseline", "pix2pix (p2p-long)"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "without evaluation.json"),
        (lambda d: (d / "bad.json").write_text("{not json") and d / "bad.json", "not valid JSON"),
        (lambda d: (d / "other.json").write_text('{"a": 1}') and d / "other.json", "not an svai evaluation JSON"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_path(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(SvaiError) as caught:
        report.load_results([path])
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_loading_and_reporting_leave_the_inputs_unchanged(runs, tmp_path):
    files = [runs["p2p"] / "evaluation.json", runs["cg"] / "evaluation.json"]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    rows = report.load_results([runs["p2p"], runs["cg"]])
    table = report.comparison_table(rows, sort="fid")
    report.html_report(rows, table, [report.image_grid(rows, k=2, cell=32)], tmp_path / "r.html")
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests


@pytest.mark.parametrize(("field", "value"), [
    ("unmatched", "none"), ("skipped", {"a": 1}), ("pred", 7), ("settings", [1, 2]),
])
def test_an_evaluation_json_edited_into_another_shape_is_one_line(runs, tmp_path, field, value):
    data = json.loads((runs["p2p"] / "evaluation.json").read_text())
    data[field] = value
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(SvaiError, match=f'"{field}" must be') as caught:
        report.load_results([edited])
    assert "\n" not in str(caught.value)


def test_a_metric_entry_edited_into_another_shape_is_one_line(runs, tmp_path):
    data = json.loads((runs["p2p"] / "evaluation.json").read_text())
    next(iter(data["metrics"].values()))["mean"] = "high"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(SvaiError, match='"mean" must be a number'):
        report.load_results([edited])


def test_a_json_nested_too_deeply_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SvaiError, match="nested too deeply"):
        report.load_results([deep])
