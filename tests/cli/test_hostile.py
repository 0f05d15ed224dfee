"""A hostile user's folders and values through the CLI: links, leftovers, odd photos, bad config.

Every case ends in one of two ways: the command does its work, or it stops with one line and
exit code 2. Either way no file the user gave is changed or deleted, and there is no traceback.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import TINY, assert_user_error, invoke

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def photo(path: Path, seed: int, size: tuple[int, int] = (120, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def photos(root: Path, count: int = 6) -> Path:
    for i in range(count):
        photo(root / f"p{i:02d}_before.png", 2 * i)
        photo(root / f"p{i:02d}_after.png", 2 * i + 1)
    return root


def one_line(result, *fragments: str) -> None:
    assert_user_error(result, *fragments)


def ends_in_one_line(result, *fragments: str) -> None:
    """Exit 2 with one error line at the end (a progress line may come before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:") and all(f in lines[-1] for f in fragments), result.stderr
    assert not any(line.startswith("error:") for line in lines[:-1]), result.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("hostile-data") / "data"
    assert invoke("prepare", "synthetic", data, "--count", "12", "--size", "32", "--test-fraction", "0.25").exit_code == 0
    return data


@pytest.fixture(scope="module")
def run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-run") / "run"
    result = invoke("train", "--model", "pix2pix", "--data", dataset, "--out", folder, "--steps", "1",
                    "--set", "train.evaluate=false", *TINY)
    assert result.exit_code == 0, result.output
    return folder


# ------------------------------------------------------------------- links into what is read

def test_prepare_refuses_an_out_subfolder_linked_into_source(tmp_path: Path) -> None:
    source = photos(tmp_path / "src")
    out = tmp_path / "out"
    assert invoke("prepare", source, out, "--size", "32", "--workers", "1").exit_code == 0
    before = hashes(source)
    link = out / "train" / "before"
    for file in link.iterdir():
        file.unlink()
    link.rmdir()
    link.symlink_to(source, target_is_directory=True)
    photo(source / "p99_before.png", 98)
    photo(source / "p99_after.png", 99)
    before = hashes(source)
    one_line(invoke("prepare", source, out, "--size", "32", "--workers", "1"), "link into SOURCE")
    assert hashes(source) == before


def test_generate_refuses_an_output_subfolder_linked_into_input(run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    photo(inputs / "sub" / "a.png", 1, (32, 32))
    photo(inputs / "b.png", 2, (32, 32))
    output = tmp_path / "out"
    output.mkdir()
    (output / "sub").symlink_to(inputs / "sub", target_is_directory=True)
    before = hashes(inputs)
    one_line(invoke("generate", "--run", run, "--input", inputs, "--output", output), "link into --input")
    assert hashes(inputs) == before


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(
        command: str, dataset: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's notes")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".svai.lock").symlink_to(precious)
    if command == "train":
        result = invoke("train", "--model", "pix2pix", "--data", dataset, "--out", out, "--steps", "1", *TINY)
    else:
        result = invoke("prepare", photos(tmp_path / "src"), out, "--size", "32")
    one_line(result, "symbolic link")
    assert precious.read_text() == "the user's notes"


def test_a_lock_file_hard_linked_to_a_users_file_is_not_truncated(dataset: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's notes")
    out = tmp_path / "out"
    out.mkdir()
    os.link(precious, out / ".svai.lock")
    one_line(invoke("train", "--model", "pix2pix", "--data", dataset, "--out", out, "--steps", "1", *TINY),
             "hard link")
    assert precious.read_text() == "the user's notes"


# ------------------------------------------------------------------------------- leftovers

def test_train_never_deletes_a_users_samples_folder(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    photo(out / "samples" / "holiday.png", 3)
    before = hashes(out)
    one_line(invoke("train", "--model", "pix2pix", "--data", dataset, "--out", out, "--steps", "1", *TINY),
             "did not write")
    assert hashes(out) == before


def test_train_never_replaces_the_config_it_reads(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    config = out / "config.yaml"
    config.write_text("model:\n  name: pix2pix\n  ngf: 8\n  ndf: 8\ntrain:\n  steps: 1\n")
    before = hashes(out)
    one_line(invoke("train", "--data", dataset, "--out", out, "--config", config, "--image-size", "32"), "--config")
    assert hashes(out) == before


def test_a_run_that_stopped_before_its_first_checkpoint_still_starts_again(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", "pix2pix", "--data", dataset, "--out", out, "--steps", "2",
            "--set", "train.evaluate=false", "--set", "train.sample_every=1", "--image-size", "32",
            "--set", "model.ngf=8", "--set", "model.ndf=8"]
    assert invoke(*args).exit_code == 0
    import shutil

    shutil.rmtree(out / "checkpoints")  # as if it had stopped before its first checkpoint
    assert invoke(*args).exit_code == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"


def test_evaluation_of_a_run_keeps_a_users_file_in_its_predictions_folder(dataset: Path, tmp_path: Path) -> None:
    from svai.errors import SvaiError
    from svai.pipeline import evaluate_run

    out = tmp_path / "run"
    assert invoke("train", "--model", "pix2pix", "--data", dataset, "--out", out, "--steps", "1", *TINY).exit_code == 0
    assert (out / "test-predictions").is_dir()
    mine = photo(out / "test-predictions" / "mine.png", 4)
    with pytest.raises(SvaiError, match="did not write"):
        evaluate_run(out)
    assert mine.is_file()
    mine.unlink()
    assert evaluate_run(out) is not None  # its own predictions are replaced as before


def test_prepare_keeps_a_users_file_dropped_into_its_output(tmp_path: Path) -> None:
    source = photos(tmp_path / "src")
    out = tmp_path / "out"
    assert invoke("prepare", source, out, "--size", "32", "--workers", "1").exit_code == 0
    mine = photo(out / "train" / "before" / "mine.png", 5)
    for name in ("p00_before.png", "p00_after.png"):
        (source / name).unlink()  # a pair gone from SOURCE: its outputs go, nothing else
    assert invoke("prepare", source, out, "--size", "32", "--workers", "1").exit_code == 0
    assert mine.is_file()
    assert not list(out.glob("*/*/p00.png"))


# ------------------------------------------------------------------ outputs onto inputs

def test_generate_refuses_to_write_into_the_dataset_it_reads(run: Path, dataset: Path, tmp_path: Path) -> None:
    before = hashes(dataset)
    one_line(invoke("generate", "--run", run, "--input", dataset / "test" / "before",
                    "--output", dataset / "test" / "after"), "the dataset")
    assert hashes(dataset) == before


def test_evaluate_json_may_not_replace_an_input(dataset: Path) -> None:
    target = dataset / "test" / "after"
    victim = sorted(target.iterdir())[0]
    before = hashes(dataset)
    one_line(invoke("evaluate", "--pred", dataset / "test" / "before", "--target", target, "--metrics", "ssim",
                    "--json", victim), "--json")
    assert hashes(dataset) == before


def test_compare_grid_may_not_replace_an_input(dataset: Path, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    assert invoke("evaluate", "--pred", dataset / "test" / "before", "--target", dataset / "test" / "after",
                  "--metrics", "ssim", "--json", report).exit_code == 0
    victim = sorted((dataset / "test" / "after").iterdir())[0]
    before = hashes(dataset)
    one_line(invoke("compare", report, "--grid", victim), "--grid")
    assert hashes(dataset) == before


# --------------------------------------------------------------------------------- privacy

def _private_photos(root: Path) -> Path:
    photos(root, 4)
    for file in root.iterdir():
        file.chmod(0o600)
    root.chmod(0o700)
    return root


def _modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) & 0o077 for p in [root, *root.rglob("*")]}


def test_prepare_and_generate_keep_owner_only_photos_owner_only(run: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        source = _private_photos(tmp_path / "src")
        out = tmp_path / "prepared"
        assert invoke("prepare", source, out, "--size", "32", "--workers", "1").exit_code == 0
        assert _modes(out) == {0}
        generated = tmp_path / "generated"
        assert invoke("generate", "--run", run, "--input", source, "--output", generated).exit_code == 0
        assert _modes(generated) == {0}
        # Shared photos stay shared: the umask decides, as before.
        shared = photos(tmp_path / "shared", 2)
        for file in shared.iterdir():
            file.chmod(0o644)
        assert invoke("generate", "--run", run, "--input", shared, "--output", tmp_path / "g2").exit_code == 0
        assert stat.S_IMODE((tmp_path / "g2" / "p00_before.png").stat().st_mode) == 0o644
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- odd photos

def test_generate_lists_inputs_it_cannot_read(run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    photo(inputs / "a.png", 1, (32, 32))
    (inputs / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(inputs / "anim.gif")
    result = invoke("generate", "--run", run, "--input", inputs, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "IMG_0001.HEIC" in result.stderr and "anim.gif" in result.stderr
    assert "unsupported format" in result.stderr
    assert (tmp_path / "out" / "a.png").is_file()


def test_a_tiny_but_extreme_png_is_skipped_and_the_batch_written(run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for name in ("a", "b", "c"):
        photo(inputs / f"{name}.png", ord(name), (40, 30))
    Image.fromarray(np.zeros((10, 30000), np.uint8)).save(inputs / "strip.png", optimize=True)
    assert (inputs / "strip.png").stat().st_size < 5000
    result = invoke("generate", "--run", run, "--input", inputs, "--output", tmp_path / "out", "--batch-size", "4")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "strip.png" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_a_legal_long_file_name_does_not_stop_generate(run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    long = "a" * 245 + ".png"  # 249 bytes: legal, but its temporary name would not be
    photo(inputs / long, 1, (32, 32))
    photo(inputs / "b.png", 2, (32, 32))
    result = invoke("generate", "--run", run, "--input", inputs, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([long, "b.png"])


def test_long_korean_folder_names_are_prepared(tmp_path: Path) -> None:
    name = "가나다라마바사아자차카타파하" * 2  # 28 characters, 84 bytes
    folder = tmp_path / "src" / name / name / name
    photo(folder / "0001_before.png", 1)
    photo(folder / "0001_after.png", 2)
    out = tmp_path / "out"
    result = invoke("prepare", tmp_path / "src", out, "--size", "32", "--workers", "1")
    assert result.exit_code == 0, result.output
    ids = [row["id"] for row in csv.DictReader((out / "manifest.csv").open(encoding="utf-8"))]
    assert len(ids) == 1 and len(ids[0].encode()) <= 120


def test_the_same_photo_twice_stays_on_one_side_of_the_split(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for i in range(8):
        photo(source / f"a{i}_before.png", 10 * i)
        photo(source / f"a{i}_after.png", 10 * i + 1)
        os.link(source / f"a{i}_before.png", source / f"b{i}_before.png")  # the same photo, another name
        photo(source / f"b{i}_after.png", 10 * i + 2)
    out = tmp_path / "out"
    assert invoke("prepare", source, out, "--size", "32", "--workers", "1", "--test-fraction", "0.5").exit_code == 0
    split = {row["id"]: row["split"] for row in csv.DictReader((out / "manifest.csv").open(encoding="utf-8"))}
    assert len(split) == 16 and set(split.values()) == {"train", "test"}
    assert all(split[f"a{i}"] == split[f"b{i}"] for i in range(8))


# ------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("extra, fragment", [
    (["--seed", "-1"], "train.seed"),
    (["--set", "model.lr=.inf"], "model.lr"),
    (["--set", "data.num_workers=100000"], "data.num_workers"),
    (["--set", "model.ngf=100000000"], "model.ngf"),
    (["--set", "train.steps=99999999999999"], "train.steps"),
])
def test_out_of_range_settings_are_one_line(dataset: Path, tmp_path: Path, extra: list[str], fragment: str) -> None:
    started = time.monotonic()
    one_line(invoke("train", "--model", "pix2pix", "--data", dataset, "--out", tmp_path / "r", *TINY, *extra), fragment)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, fragment", [
    (["prepare", "synthetic", "{tmp}/s", "--count", "100000000000"], "--count"),
    (["prepare", "{src}", "{tmp}/p", "--workers", "100000"], "--workers"),
    (["evaluate", "--pred", "{data}/test/before", "--target", "{data}/test/after", "--batch-size", "100000000"],
     "--batch-size"),
    (["train", "--model", "cyclegan", "--data", "{data}", "--out", "{tmp}/r", "--set", "model.pool_size=1000000000"],
     "model.pool_size"),
    (["train", "--model", "stargan-v2", "--data", "{data}", "--out", "{tmp}/r", "--image-size", "32",
      "--set", "model.max_conv_dim=100000000"], "over the"),
])
def test_other_counts_and_sizes_are_bounded(dataset: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    source = photos(tmp_path / "src", 2)
    filled = [a.format(tmp=tmp_path, src=source, data=dataset) for a in args]
    one_line(invoke(*filled), fragment)


def test_a_yaml_alias_bomb_is_one_line_and_quick(dataset: Path, tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[level]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append("model: {name: pix2pix, extra: *i}")
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    assert config.stat().st_size < 1000
    started = time.monotonic()
    one_line(invoke("train", "--data", dataset, "--out", tmp_path / "r", "--config", config), "aliases")
    assert time.monotonic() - started < 10


def test_yaml_integers_are_decimal(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = invoke("train", "--model", "pix2pix", "--data", dataset, "--out", out, *TINY,
                    "--set", "train.steps=010", "--set", "train.evaluate=false")
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000010"


def test_manifests_in_latin1_or_with_a_bom(dataset: Path, tmp_path: Path) -> None:
    import shutil

    text = (dataset / "manifest.csv").read_text(encoding="utf-8").replace("synthetic:", "sénthétic:", 1)
    latin = tmp_path / "latin"
    shutil.copytree(dataset, latin)
    (latin / "manifest.csv").write_bytes(text.encode("latin-1"))
    one_line(invoke("train", "--model", "pix2pix", "--data", latin, "--out", tmp_path / "r1", *TINY), "UTF-8")
    bom = tmp_path / "bom"
    shutil.copytree(dataset, bom)
    (bom / "manifest.csv").write_bytes(b"\xef\xbb\xbf" + (dataset / "manifest.csv").read_bytes())
    result = invoke("train", "--model", "pix2pix", "--data", bom, "--out", tmp_path / "r2", "--steps", "1",
                    "--set", "train.evaluate=false", *TINY)
    assert result.exit_code == 0, result.output


def test_resume_after_a_cut_short_log_line(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = ["train", "--model", "pix2pix", "--data", dataset, "--out", out, "--set", "train.evaluate=false",
            "--set", "train.log_every=1", *TINY]
    assert invoke(*args, "--steps", "1").exit_code == 0
    with open(out / "log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 2, "G": 0.5')  # the disk filled mid-line
    result = invoke(*args, "--steps", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr("svai.checkpoint.save_file", full)
    out = tmp_path / "r"
    ends_in_one_line(invoke("train", "--model", "pix2pix", "--data", dataset, "--out", out, "--steps", "1", *TINY),
                     "no space left")
    assert not list((out / "checkpoints").glob(".tmp-*"))


def _tamper_header(file: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header)
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(text) == length
    file.write_bytes(data[:8] + text + data[8 + length:])


def _first_tensor(header: dict) -> dict:
    return header[next(k for k in header if k != "__metadata__")]


@pytest.mark.parametrize("change", [
    lambda h: _first_tensor(h).__setitem__("data_offsets", None),
    lambda h: _first_tensor(h).__setitem__("shape", [9]),
    lambda h: _first_tensor(h).__setitem__("dtype", "X9"),
])
def test_a_tampered_checkpoint_header_is_one_line(run: Path, dataset: Path, tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _tamper_header(next((copy / "checkpoints").glob("step-*")) / "weights.safetensors", change)
    one_line(invoke("generate", "--run", copy, "--input", dataset / "test" / "before", "--output", tmp_path / "o"),
             "checkpoint")


def test_an_evaluation_json_of_another_shape_is_one_line(dataset: Path, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    assert invoke("evaluate", "--pred", dataset / "test" / "before", "--target", dataset / "test" / "after",
                  "--metrics", "ssim", "--json", report).exit_code == 0
    data = json.loads(report.read_text())
    data["unmatched"] = "none"
    report.write_text(json.dumps(data))
    one_line(invoke("compare", report), "unmatched")


def test_an_ascii_terminal_gets_ascii_symbols(dataset: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "svai.cli", "evaluate", "--pred", str(dataset / "test" / "before"),
         "--target", str(dataset / "test" / "after"), "--metrics", "ssim"],
        capture_output=True, env={**ENV, "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert result.returncode == 0, result.stderr.decode("ascii", "replace")
    assert b"Traceback" not in result.stderr and b"+/-" in result.stdout


def test_a_wrong_lpips_backbone_is_named(dataset: Path, use_torch_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = invoke("evaluate", "--pred", dataset / "test" / "before", "--target", dataset / "test" / "after",
                    "--metrics", "lpips")
    assert result.exit_code == 0, result.output
    assert "alexnet-owt-7be5be79.pth does not match" in caplog.text


def test_a_run_without_a_test_split_says_nothing_was_evaluated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert invoke("prepare", "synthetic", data, "--count", "4", "--size", "32", "--test-fraction", "0").exit_code == 0
    result = invoke("train", "--model", "pix2pix", "--data", data, "--out", tmp_path / "r", "--steps", "1", *TINY)
    assert result.exit_code == 0, result.output
    assert "nothing was evaluated" in result.stderr


def test_weights_fetch_stopped_by_sigterm_leaves_no_part_file(tmp_path: Path) -> None:
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)  # nobody writes: the download waits forever
    folder = tmp_path / "weights"
    process = subprocess.Popen(
        [sys.executable, "-m", "svai.cli", "weights", "fetch", "squeezenet", "--url", fifo.as_uri(),
         "--weights-dir", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 60
    while not list(folder.glob("*.part")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert b"Traceback" not in stderr
    assert not list(folder.iterdir())
