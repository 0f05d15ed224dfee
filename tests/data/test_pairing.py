"""Finding pairs: folders, name tokens, composites, CSV; ids, labels, duplicates, skips."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svai.data.pairing import find_pairs, load_label_aliases, make_id, split_role_token
from svai.errors import SvaiError


def photo(path: Path, width: int = 40, height: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(data).save(path)
    return path


def by_id(result) -> dict:  # type: ignore[no-untyped-def]
    return {pair.id: pair for pair in result.pairs}


def reasons(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {skip.file: skip.reason for skip in result.skipped}


def test_before_after_folders_any_case_any_depth(tmp_path: Path) -> None:
    photo(tmp_path / "clinicA" / "eyes" / "BEFORE" / "0012.jpg")
    photo(tmp_path / "clinicA" / "eyes" / "After" / "0012.png")  # extension may differ
    photo(tmp_path / "x" / "y" / "z" / "before" / "7.jpg")
    photo(tmp_path / "x" / "y" / "z" / "after" / "7.jpg")
    result = find_pairs(tmp_path)
    pairs = by_id(result)
    assert set(pairs) == {"clinicA-eyes-0012", "x-y-z-7"}
    pair = pairs["clinicA-eyes-0012"]
    assert pair.before.name == "0012.jpg" and pair.before.parent.name == "BEFORE"
    assert pair.after.name == "0012.png"
    assert result.skipped == []


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("0012_before.jpg", "0012_after.jpg"),
        ("0012-PRE.jpg", "0012-post.png"),
        ("0012.b.jpg", "0012.A.jpeg"),
        ("0012 전.jpg", "0012 후.jpg"),
        ("0012_Before.JPG", "0012_AFTER.png"),
    ],
)
def test_name_tokens(tmp_path: Path, before: str, after: str) -> None:
    photo(tmp_path / "nose" / before)
    photo(tmp_path / "nose" / after)
    result = find_pairs(tmp_path)
    assert list(by_id(result)) == ["nose-0012"]
    pair = result.pairs[0]
    assert (pair.before.name, pair.after.name) == (before, after)
    assert pair.procedures == ("nose",)


def test_korean_tokens_survive_decomposed_file_names(tmp_path: Path) -> None:
    # macOS writes Hangul decomposed (NFD); the token must still be found.
    photo(tmp_path / unicodedata.normalize("NFD", "김_전.jpg"))
    photo(tmp_path / unicodedata.normalize("NFD", "김_후.jpg"))
    result = find_pairs(tmp_path)
    assert [p.id for p in result.pairs] == ["김"]


def test_split_role_token() -> None:
    assert split_role_token("a_b_before") == ("a_b", "before")
    assert split_role_token("face-a") == ("face", "after")
    assert split_role_token("before") is None  # nothing left for the id
    assert split_role_token("prepost") is None  # no separator


def test_side_by_side_detected_and_forced(tmp_path: Path) -> None:
    photo(tmp_path / "aligned" / "1.png", 80, 40)
    photo(tmp_path / "aligned" / "2.png", 40, 40)  # square: not a composite in auto mode
    auto = find_pairs(tmp_path)
    assert [(p.id, p.composite) for p in auto.pairs] == [("aligned-1", True)]
    assert reasons(auto) == {"aligned/2.png": "unpaired"}
    forced = find_pairs(tmp_path, "side-by-side", order="after-before")
    assert [p.id for p in forced.pairs] == ["aligned-1", "aligned-2"]
    assert all(p.composite and p.swap for p in forced.pairs)


def test_forced_mode_ignores_other_rules(tmp_path: Path) -> None:
    photo(tmp_path / "before" / "1.jpg")
    photo(tmp_path / "after" / "1.jpg")
    photo(tmp_path / "2_before.jpg")
    photo(tmp_path / "2_after.jpg")
    assert [p.id for p in find_pairs(tmp_path, "dirs").pairs] == ["1"]
    names = find_pairs(tmp_path, "names")
    assert [p.id for p in names.pairs] == ["2"]
    assert reasons(names)["before/1.jpg"] == "unpaired"


def test_missing_side_ambiguous_and_non_images(tmp_path: Path) -> None:
    photo(tmp_path / "a_before.jpg")
    photo(tmp_path / "b_after.jpg")
    photo(tmp_path / "c_before.jpg")
    photo(tmp_path / "c_before.png")
    photo(tmp_path / "c_after.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "IMG_1.HEIC").write_bytes(b"\x00" * 10)
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    result = find_pairs(tmp_path)
    assert result.pairs == []
    assert reasons(result) == {
        "a_before.jpg": "missing after",
        "b_after.jpg": "missing before",
        "c_after.jpg": "ambiguous",
        "c_before.jpg": "ambiguous",
        "c_before.png": "ambiguous",
        "notes.txt": "not an image",
        "IMG_1.HEIC": "unsupported format",
    }


def test_ids_are_filesystem_safe_and_duplicates_reported(tmp_path: Path) -> None:
    photo(tmp_path / "a b" / "1_before.jpg")
    photo(tmp_path / "a b" / "1_after.jpg")
    photo(tmp_path / "a-b" / "1_before.jpg")  # maps to the same id "a-b-1"
    photo(tmp_path / "a-b" / "1_after.jpg")
    photo(tmp_path / "A-B" / "1_before.jpg")  # same id but for letter case
    photo(tmp_path / "A-B" / "1_after.jpg")
    result = find_pairs(tmp_path)
    assert len(result.pairs) == 1
    assert result.pairs[0].id.casefold() == "a-b-1"
    assert sorted(s.reason for s in result.skipped) == ["duplicate id", "duplicate id"]
    assert make_id(["clinic A", "eyes/nose", "x:y*z?"]) == "clinic-A-eyes-nose-x-y-z"
    long = make_id(["x" * 500])
    assert len(long) <= 120 and long != make_id(["x" * 499])


def test_labels_from_folder_aliases(tmp_path: Path) -> None:
    for folder in ("Blepharoplasty", "Double_Eyelid", "rhinoplasty", "V-Line", "chin", "MANDIBLE",
                   "FacialBones", "holiday"):
        photo(tmp_path / "clinic" / folder / "1_before.jpg")
        photo(tmp_path / "clinic" / folder / "1_after.jpg")
    photo(tmp_path / "eyes" / "nose" / "2_before.jpg")
    photo(tmp_path / "eyes" / "nose" / "2_after.jpg")
    labels = {p.id: p.procedures for p in find_pairs(tmp_path).pairs}
    assert labels == {
        "clinic-Blepharoplasty-1": ("eyes",),
        "clinic-Double_Eyelid-1": ("eyes",),
        "clinic-rhinoplasty-1": ("nose",),
        "clinic-V-Line-1": ("jaw",),
        "clinic-chin-1": ("jaw",),
        "clinic-MANDIBLE-1": ("jaw",),
        "clinic-FacialBones-1": ("jaw",),
        "clinic-holiday-1": (),
        "eyes-nose-2": ("eyes", "nose"),
    }


def test_labels_yaml_extends_and_overrides(tmp_path: Path) -> None:
    mapping = tmp_path / "labels.yaml"
    mapping.write_text("ptosis: eyes\nchin: null\ncombo: [eyes, jaw]\n")
    aliases = load_label_aliases(mapping)
    source = tmp_path / "src"
    for folder in ("Ptosis", "chin", "combo"):
        photo(source / folder / "1_before.jpg")
        photo(source / folder / "1_after.jpg")
    labels = {p.id: p.procedures for p in find_pairs(source, aliases=aliases).pairs}
    assert labels == {"Ptosis-1": ("eyes",), "chin-1": (), "combo-1": ("eyes", "jaw")}


def test_labels_yaml_can_add_procedures_to_the_vocabulary(tmp_path: Path) -> None:
    mapping = tmp_path / "labels.yaml"
    mapping.write_text("lipfiller: lips\nfacelift: [facelift, jaw]\n")
    aliases = load_label_aliases(mapping)
    source = tmp_path / "src"
    for folder in ("lipfiller", "facelift"):
        photo(source / folder / "1_before.jpg")
        photo(source / folder / "1_after.jpg")
    labels = {p.id: p.procedures for p in find_pairs(source, aliases=aliases).pairs}
    # the defaults keep their place; new procedures follow, sorted
    assert labels == {"lipfiller-1": ("lips",), "facelift-1": ("jaw", "facelift")}


@pytest.mark.parametrize(
    ("text", "message"),
    [("ptosis: Lips!\n", "invalid procedure name 'Lips!'"), ("- eyes\n", "expected a mapping"), ("a: [\n", "not valid YAML")],
)
def test_labels_yaml_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    mapping = tmp_path / "labels.yaml"
    mapping.write_text(text)
    with pytest.raises(SvaiError, match=message) as caught:
        load_label_aliases(mapping)
    assert "labels.yaml" in str(caught.value)


def test_csv_pairs_relative_to_the_csv(tmp_path: Path) -> None:
    photo(tmp_path / "data" / "p1" / "pre.jpg")
    photo(tmp_path / "data" / "p1" / "post.jpg")
    photo(tmp_path / "data" / "rhinoplasty" / "x_before.jpg")
    photo(tmp_path / "data" / "rhinoplasty" / "x_after.jpg")
    table = tmp_path / "data" / "pairs.csv"
    table.write_text(
        "\ufeffBefore,After,Subject,Procedures\n"  # Excel's BOM and capitalised headers
        "p1/pre.jpg,p1/post.jpg,alice,eyes+jaw\n"
        "rhinoplasty/x_before.jpg,rhinoplasty/x_after.jpg,,\n"
        "p1/pre.jpg,p1/gone.jpg,bob,\n"
        "p1/pre.jpg,p1/post.jpg,carol,lips\n"
        ",p1/post.jpg,dan,\n"
    )
    result = find_pairs(table)
    pairs = by_id(result)
    assert set(pairs) == {"p1-pre", "rhinoplasty-x"}
    assert (pairs["p1-pre"].subject, pairs["p1-pre"].procedures) == ("alice", ("eyes", "jaw"))
    # No subject or procedures in the CSV: the pair id, and the folder's label.
    assert (pairs["rhinoplasty-x"].subject, pairs["rhinoplasty-x"].procedures) == ("rhinoplasty-x", ("nose",))
    assert reasons(result) == {"p1/gone.jpg": "missing file", "pairs.csv:5": "bad row", "pairs.csv:6": "bad row"}


def test_csv_errors(tmp_path: Path) -> None:
    table = tmp_path / "pairs.csv"
    table.write_text("left,right\na.jpg,b.jpg\n")
    with pytest.raises(SvaiError, match="missing column 'before'"):
        find_pairs(table)
    with pytest.raises(SvaiError, match="--pairing csv needs a CSV"):
        find_pairs(tmp_path, "csv")
    with pytest.raises(SvaiError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")


def test_ids_are_bounded_in_bytes_not_letters() -> None:
    name = "가나다라마바사아자차카타파하" * 2
    pair_id = make_id((name, name, name, "0001"))
    assert len(pair_id.encode("utf-8")) <= 120
    assert make_id((name, name, name, "0002")) != pair_id
    assert make_id(("clinicA", "eyes", "0012")) == "clinicA-eyes-0012"


def test_pairs_sharing_a_photo_share_a_subject(tmp_path: Path) -> None:
    import os

    from svai.data.pairing import Pair, share_subjects

    def image(name: str, value: int) -> Path:
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name)
        return tmp_path / name

    a, b = image("a.png", 1), image("b.png", 2)
    os.link(a, tmp_path / "a-link.png")
    copy = tmp_path / "b-copy.png"
    copy.write_bytes(b.read_bytes())
    c = image("c.png", 3)
    pairs = [Pair("p1", a, image("x1.png", 4), "s1"), Pair("p2", tmp_path / "a-link.png", image("x2.png", 5), "s2"),
             Pair("p3", copy, image("x3.png", 6), "s3"), Pair("p4", c, b, "s4"), Pair("p5", image("y.png", 7), c, "s5")]
    assert [p.subject for p in share_subjects(pairs)] == ["s1", "s1", "s3", "s3", "s3"]


def test_a_labels_file_is_read_with_bounded_effort(tmp_path: Path) -> None:
    lines = ["a: &a [eyes, eyes, eyes, eyes, eyes, eyes, eyes, eyes, eyes]"]
    for level, name in enumerate("bcdefgh"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{'abcdefgh'[level]}"] * 9) + "]")
    path = tmp_path / "labels.yaml"
    path.write_text("\n".join(lines))
    with pytest.raises(SvaiError, match="--labels .*aliases"):
        load_label_aliases(path)
