"""docs/api.md: every `python` block runs, in order, in a folder holding a small demo made the
way `make demo` makes its own (prepare, train the recommended model, `svai generate`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import run_ok

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]



@pytest.fixture()
def demo_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """demo/data, demo/runs/pix2pix-warp and demo/predictions/pix2pix-warp, as examples/demo.sh
    makes them, at a size a test affords."""
    demo = tmp_path / "demo"
    run_ok("prepare", "synthetic", demo / "data", "--count", "16", "--size", "64", "--seed", "0",
           "--test-fraction", "0.25")
    run_ok("train", "--model", "pix2pix-warp", "--data", demo / "data", "--out", demo / "runs" / "pix2pix-warp",
           "--steps", "3", "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.sample_every=0",
           "--set", "train.evaluate=false")
    run_ok("generate", "--run", demo / "runs" / "pix2pix-warp", "--input", demo / "data" / "test" / "before",
           "--output", demo / "predictions" / "pix2pix-warp")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_page_has_examples() -> None:
    found = blocks()
    assert len(found) >= 4
    assert any("simulate" in code for _, code in found) and any("api.train" in code for _, code in found)


@pytest.mark.slow
def test_every_example_in_the_api_docs_runs(demo_folder: Path) -> None:
    namespace: dict = {"__name__": "docs_api"}
    for line, code in blocks():
        exec(compile(code, f"{DOC}:{line}", "exec"), namespace)  # noqa: S102 - the page's own examples
    # The examples left what they say they make.
    assert (demo_folder / "runs" / "warp" / "evaluation.json").is_file()
    tests = sorted(p.name for p in (demo_folder / "data" / "synth" / "test" / "before").glob("*.png"))
    assert tests and sorted(p.name for p in (demo_folder / "out" / "warp").glob("*.png")) == tests
