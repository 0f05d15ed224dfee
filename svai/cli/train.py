"""`svai train`: train a model on a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from svai.cli.app import app, console, err_console, user_errors

def _format_logs(logs: dict[str, Any]) -> str:
    shown = [f"{k} {v:.3g}" for k, v in logs.items() if k not in ("step", "lr_factor", "images_per_s")]
    if "images_per_s" in logs:
        shown.append(f"{logs['images_per_s']:.1f} img/s")
    return "  ".join(shown)


def _summary(evaluation: dict[str, Any]) -> str:
    """One line: each metric of the model next to the do-nothing baseline's."""
    from svai.metrics.specs import headline_metrics

    baseline = (evaluation.get("baseline") or {}).get("metrics", {})
    parts = []
    for name in headline_metrics():
        entry = evaluation["metrics"].get(name)
        if entry is None or entry.get("mean") is None:
            continue
        text = f"{name} {entry['mean']:.4g}"
        if baseline.get(name, {}).get("mean") is not None:
            text += f" (do nothing: {baseline[name]['mean']:.4g})"
        parts.append(text)
    return ", ".join(parts) or "no metric could be computed"


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai train --model pix2pix --data data/synth --out runs/p2p --steps 2000\n\n"
        "  svai train --model cyclegan-attn --data data/synth --out runs/cga --set model.attention_heads=4\n\n"
        "  svai train --out runs/p2p --resume --steps 4000      (continue a run up to step 4000)\n\n"
        "  svai train --model pix2pix --data data/synth --out runs/p2p --log-with tensorboard\n\n"
        "  accelerate launch -m svai.cli train --model pix2pix ...   (several GPUs)\n\n"
        "Settings, lowest precedence first: model defaults < preset < --config < --set < flags."
    ),
)
@user_errors
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME", help="Model or preset name (see `svai models`)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset folder (from `svai prepare`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config, checkpoints, samples, log."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with model/data/train settings."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimisation steps of the run (resume continues up to it)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step and process."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Training image size in pixels."),
    mixed_precision: Optional[str] = typer.Option(None, "--mixed-precision", metavar="no|fp16|bf16", help="Autocast precision (fp16 needs a CUDA GPU)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (weights, data order, dropout)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override any setting: --set model.lambda_l1=50 (repeatable)."),
    log_with: Optional[list[str]] = typer.Option(
        None, "--log-with", metavar="TRACKER",
        help="Also log to an experiment tracker: tensorboard, wandb, mlflow, aim … (repeatable; needs its extra, "
             "e.g. pip install 'svai\\[tensorboard]')."),
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue the run in --out from its latest intact checkpoint (or redo its cut-short evaluation)."),
) -> None:
    """Train an image-to-image model; Ctrl-C saves a checkpoint and stops cleanly."""
    from svai.run import TrainOptions, only_evaluation_left, run_privacy, writing

    options = TrainOptions(model, data, out, steps=steps, batch_size=batch_size, image_size=image_size,
                           mixed_precision=mixed_precision, seed=seed, config=config, sets=set_ or [],
                           log_with=log_with or [], resume=resume)
    resolved = options.resolve()
    with writing(out, run_privacy(resolved)):
        if resume and only_evaluation_left(out, resolved):
            _evaluate(out)
            return
        _train(resolved, out, resume)


def _train(resolved: Any, out: Path, resume: bool) -> None:
    from svai.train import open_run

    trainer = open_run(resolved, out, resume)
    main_process = trainer.accelerator.is_main_process
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[logs]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=err_console, transient=False, disable=not main_process,
    ) as progress:
        task = progress.add_task(resolved.name, total=resolved.train.steps, logs="")

        def on_event(event: dict[str, Any]) -> None:
            kind = event["event"]
            if kind == "start":
                progress.update(task, completed=event["step"])
            elif kind in ("step", "log"):
                fields = {"logs": _format_logs(event["logs"])} if kind == "log" else {}
                progress.update(task, completed=event["step"], **fields)

        result = trainer.run(on_event)
    if result.interrupted:
        if not main_process:
            raise typer.Exit(code=130)
        err_console.print(
            f"stopped at step {result.step}/{result.total_steps}; checkpoint saved in {result.checkpoint}. "
            f"Continue with: svai train --out {out} --resume"
        )
        raise typer.Exit(code=130)
    if not main_process:
        return
    console.print(f"trained {resolved.name} to step {result.step}; run folder: {out}")
    if resolved.train.evaluate:
        _evaluate(out)


def _evaluate(out: Path) -> None:
    """The end-of-training evaluation; Ctrl-C or SIGTERM leaves it to be redone with --resume."""
    from svai.pipeline import evaluate_run
    from svai.signals import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt(), err_console.status("evaluating the test split"):
            evaluation = evaluate_run(out)
    except KeyboardInterrupt:
        err_console.print(f"evaluation stopped; redo it with: svai train --out {out} --resume")
        raise typer.Exit(code=130) from None
    if evaluation is None:
        err_console.print("note: the dataset has no test split, so nothing was evaluated "
                          "(prepare it with --test-fraction above 0 to get one)")
        return
    console.print(f"test split: {_summary(evaluation)} -> {out / 'evaluation.json'}")
