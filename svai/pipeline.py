"""Steps that chain the library's stages for one run: predict the test split, then score it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from svai.errors import SvaiError
from svai.io import OwnFiles
from svai.run import EVALUATION_FILE, PREDICTIONS_DIR

log = logging.getLogger(__name__)


def evaluate_run(run_dir: Path, checkpoint: str | int = "latest", device: str | None = None) -> dict[str, Any] | None:
    """Translate the run's test split and evaluate it against the true after photos.

    Generates as `svai generate` does by default (the run's `generate.composite`). Writes
    `RUN/test-predictions/` (afresh) and then `RUN/evaluation.json` (with the do-nothing
    baseline), so `svai compare RUN` finds the result; an evaluation that was stopped leaves
    no evaluation.json and is redone by `svai train --out RUN --resume`. Returns the evaluation, or None when the
    dataset has no test split. Metrics whose pretrained weights are missing are recorded as
    unavailable, never fatal.
    """
    from svai.composite import CompositeOptions
    from svai.generate import Generation, generate_folder, load_model
    from svai.metrics.evaluate import evaluate_folders, write_json
    from svai.metrics.options import EvaluateOptions

    run_dir = Path(run_dir)
    model = load_model(run_dir, checkpoint, device)
    data = Path(model.config.data.root)
    before, after = data / "test" / "before", data / "test" / "after"
    if not (before.is_dir() and after.is_dir()):
        log.info("no test split in %s: nothing to evaluate", data)
        return None
    predictions = run_dir / PREDICTIONS_DIR
    # Predictions of an evaluation cut short (SIGTERM, a crash) are dropped, so the metrics
    # never mix two checkpoints' images; only files the run's record proves svai wrote go.
    own = OwnFiles(run_dir)
    kept = own.remove_under(predictions)
    if kept:
        raise SvaiError(f"{predictions} holds files svai did not write (e.g. {kept[0]}): move them elsewhere, "
                        f"then run `svai train --out {run_dir} --resume` to evaluate")
    own.save()
    # As `svai generate` would run it: with the run's default composite.
    settings = Generation(composite=CompositeOptions() if model.config.generate.composite else None)
    try:
        report = generate_folder(model, before, predictions, settings)
    finally:
        own.note_with_folders(*(p for p in predictions.rglob("*") if not p.name.startswith(".")))
        own.save()
    if report.skipped:
        raise SvaiError(f"{len(report.skipped)} test images could not be read, e.g. {report.skipped[0][0]}")
    result = evaluate_folders(predictions, after,
                              EvaluateOptions(baseline=before, name=model.config.name, device=str(model.device)))
    result["checkpoint_step"] = model.step
    write_json(result, run_dir / EVALUATION_FILE)
    own.note(run_dir / EVALUATION_FILE)
    own.save()
    return result
