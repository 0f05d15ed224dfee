"""The manifest's procedures column: strengths survive the round trip; old manifests load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from svai.data.dataset import PairedImages
from svai.data.layout import DatasetWriter, PairRecord, format_procedures, parse_strengths, read_manifest, vocabulary
from svai.errors import SvaiError


def write(root: Path, records: list[PairRecord]) -> None:
    writer = DatasetWriter(root)
    image = np.zeros((16, 16, 3), np.uint8)
    for record in records:
        writer.add(record, image, image)
    writer.close({"source": "test"})


def test_strengths_survive_the_manifest_round_trip(tmp_path: Path) -> None:
    write(tmp_path, [PairRecord("a", "train", "s1", ("jaw", "nose"), strengths=(0.3, 0.6234)),
                     PairRecord("b", "train", "s2", ("eyes",))])
    records = {r.id: r for r in read_manifest(tmp_path)}
    assert records["a"].strength_of() == {"nose": 0.6234, "jaw": 0.3}
    assert "nose:0.6234+jaw:0.3" in (tmp_path / "manifest.csv").read_text()
    assert records["b"].strength_of() == {"eyes": 1.0} and records["b"].strengths == ()


def test_an_old_manifest_without_strengths_loads_at_full_strength(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("id,split,subject,procedures\np1,train,s1,eyes+jaw\n")
    (record,) = read_manifest(tmp_path)
    assert record.procedures == ("eyes", "jaw") and record.strength_of() == {"eyes": 1.0, "jaw": 1.0}


def test_bad_procedure_cells_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("id,split,subject,procedures\np1,train,s1,nose:1.5\n")
    with pytest.raises(SvaiError, match="manifest.csv line 2.*nose"):
        read_manifest(tmp_path)


def test_the_vocabulary_extends_the_defaults_in_a_stable_order(tmp_path: Path) -> None:
    records = [PairRecord("a", "train", "s", ("lips",)), PairRecord("b", "test", "t", ("facelift", "nose"))]
    assert vocabulary(records) == ("eyes", "nose", "jaw", "facelift", "lips")
    assert format_procedures(("lips", "jaw")) == "jaw+lips"
    assert parse_strengths("lips:0.25+eyes") == {"lips": 0.25, "eyes": 1.0}
    write(tmp_path, records)
    data = PairedImages(tmp_path, "train", 16)
    assert data.vocabulary == ("eyes", "nose", "jaw", "facelift", "lips")
    assert data[0]["procedures"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    with pytest.raises(SvaiError, match="'facelift' is not among the run's procedures"):
        PairedImages(tmp_path, "train", 16, vocabulary=("eyes", "nose", "jaw", "lips"))


def test_a_manifest_saved_as_latin1_is_one_line_and_a_bom_is_no_column(tiny_dataset: Path, tmp_path: Path) -> None:
    text = (tiny_dataset / "manifest.csv").read_text(encoding="utf-8")
    (tmp_path / "manifest.csv").write_bytes(text.replace(",s000,", ",Renée,", 1).encode("latin-1"))
    with pytest.raises(SvaiError, match="not UTF-8") as caught:
        read_manifest(tmp_path)
    assert "\n" not in str(caught.value)
    (tmp_path / "manifest.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_manifest(tmp_path) == read_manifest(tiny_dataset)


@pytest.mark.parametrize("bad_id", ["../../outside", "a/b", ".hidden", ""])
def test_a_manifest_id_that_is_not_a_plain_name_is_refused(tiny_dataset: Path, tmp_path: Path, bad_id: str) -> None:
    text = (tiny_dataset / "manifest.csv").read_text(encoding="utf-8")
    (tmp_path / "manifest.csv").write_text(text.replace("\np000,", f"\n{bad_id},", 1), encoding="utf-8")
    with pytest.raises(SvaiError, match="not a plain name"):
        read_manifest(tmp_path)


def test_a_manifest_field_over_the_csv_limit_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    text = (tiny_dataset / "manifest.csv").read_text(encoding="utf-8")
    (tmp_path / "manifest.csv").write_text(text.replace(",s000,", ',"' + "s" * 200_000 + '",', 1), encoding="utf-8")
    with pytest.raises(SvaiError, match="not a readable CSV"):
        read_manifest(tmp_path)
