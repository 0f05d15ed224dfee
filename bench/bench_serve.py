"""Benchmark `svai serve`: from upload to result for a 12 MP phone photo, and where the time goes.

    .venv/bin/python bench/bench_serve.py                     # fits the recommended model
    .venv/bin/python bench/bench_serve.py --model pix2pix --set model.output=warp  # a learned warp
    .venv/bin/python bench/bench_serve.py --run runs/p2p-warp # a run of yours
    .venv/bin/python bench/bench_serve.py --repeat 10 --audit # more rounds; with the audit log on
    .venv/bin/python bench/bench_serve.py --threads 1         # the model on one core

Input: a 4000x3000 JPEG (quality 92) stored with EXIF orientation 6, so the app must turn it
upright (3000x4000): a face drawn by the synthetic data generator, 60 % of the short side, on
a plain background with sensor-like noise, made here.

Model: without --run, --model (default: the recommended model, landmark-warp) trained for
--steps steps at 128 px on synthetic pairs with landmarks in a temporary folder (the face
layer must be installed: `svai weights import`; when $SVAI_WEIGHTS_DIR is unset, the
`.venv/weights` folder that `make venv` fills is used). Timings do not depend on how well it is
trained, only on its architecture and size.

Figures, each the median of --repeat rounds (the best in brackets):
- the split, calling the app's own functions in the order a request does: decode (the
  upload decoded, EXIF applied), crop (the face found, its square cut out), model (the square
  resized to the model's size, the forward pass, and the change applied to the square at its
  own size: for a warp model the field upsampled and the square resampled through it), paste
  (the simulation put into the photo; with and without composite), encode (the face view the
  page shows: before, simulation and difference shrunk to 1024 px and PNG-encoded);
- end to end through the HTTP app in this process (Starlette's test client): POST the photo,
  POST the settings, GET the before, simulation and difference images, as the page does;
- two tabs at once: two simulations of the same photo sent together, both answered;
- save: the stamped before | simulation PNG of the face view.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if (ROOT / ".venv" / "weights").is_dir():
    os.environ.setdefault("SVAI_WEIGHTS_DIR", str(ROOT / ".venv" / "weights"))

import torch  # noqa: E402

from svai.composite import CompositeOptions  # noqa: E402
from svai.generate import load_model, translate_batch  # noqa: E402
from svai.io import png_bytes  # noqa: E402
from svai.models.registry import recommended_model  # noqa: E402
from svai.serve.app import display  # noqa: E402
from svai.serve.photo import (  # noqa: E402
    PrivateFolder, decode_upload, difference, face_square, frame_photo, paste, pixels_sha256, region,
    simulated_photo, view_box,
)
from svai.serve.simulate import Settings, Simulator, model_request, serve_models  # noqa: E402

T = TypeVar("T")

def phone_photo(width: int = 4000, height: int = 3000, seed: int = 0) -> bytes:
    """A JPEG stored `width` x `height` with EXIF orientation 6: shown upright as height x width."""
    from svai.data.synthetic import generate_pairs

    shown_w, shown_h = height, width
    face = next(iter(generate_pairs(1, 512, seed))).before
    side = int(0.6 * shown_w)
    canvas = Image.new("RGB", (shown_w, shown_h), (70, 88, 118))
    canvas.paste(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC),
                 ((shown_w - side) // 2, (shown_h - side) // 2 - side // 10))
    pixels = np.asarray(canvas, dtype=np.int16)
    pixels += np.random.default_rng(seed).integers(-4, 5, pixels.shape, dtype=np.int16)
    stored = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def train_quick(root: Path, model: str, settings: list[str], steps: int) -> Path:
    from typer.testing import CliRunner

    from svai.cli import app

    data, run = root / "data", root / "run"
    extra = [part for setting in settings for part in ("--set", setting)]
    for args in (["prepare", "synthetic", str(data), "--count", "24", "--size", "128", "--seed", "0"],
                 ["train", "--model", model, *extra, "--data", str(data), "--out", str(run), "--steps", str(steps),
                  "--batch-size", "4", "--set", "train.sample_every=0", "--set", "train.evaluate=false"]):
        result = CliRunner().invoke(app, args)
        if result.exit_code != 0:
            raise SystemExit(f"svai {args[0]} failed:\n{result.output}")
    return run


def timed(function: Callable[[], T], repeat: int) -> tuple[float, float, T]:
    """(median, best) seconds over `repeat` calls (at least one), and the last call's value."""
    times = []
    for _ in range(max(1, repeat) - 1):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    value = function()
    times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), value


def line(name: str, median: float, best: float, note: str = "") -> None:
    print(f"  {name:<34} {median * 1000:8.0f} ms  (best {best * 1000:6.0f}){'  ' + note if note else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained run folder (default: train --model briefly)")
    parser.add_argument("--model", default=recommended_model(), help="the model to train (default: the recommended one)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting for --model, as in `svai train --set`")
    parser.add_argument("--steps", type=int, default=20, help="training steps of the quick model")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--audit", action="store_true", help="time the audit log's output digest too")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch, PrivateFolder() as private:
        run = args.run or train_quick(Path(scratch), args.model, args.settings, args.steps)
        model = load_model(run, device="cpu")
        served = serve_models([run], [model])
        simulator = Simulator(served)
        data = phone_photo()
        settings = Settings(procedures=tuple(served[0].controls.procedures[:1]), intensity=1.0)
        request = model_request(served[0], settings)
        size = model.config.data.image_size
        output = getattr(model.config.model, "output", None)
        print(f"svai serve benchmark: {model.config.name} ({f'output={output}, ' if output else ''}"
              f"{size} px, step {model.step}), torch threads {torch.get_num_threads()}, {args.repeat} rounds")
        print(f"photo: {len(data) / 2**20:.1f} MB JPEG, stored 4000x3000 with EXIF orientation 6")

        # -- the split, in a worker thread as the app runs it -----------------------------------
        # (With torch's two OpenMP threads on a busy machine, a forward pass timed in the main
        # thread was at times tens of times slower than in a worker thread: hence both lines.)
        def split() -> np.ndarray:
            decode_m, decode_b, image = timed(lambda: decode_upload(data, "photo.jpg", private.path),
                                              args.repeat)
            face_m, face_b, photo = timed(lambda: frame_photo(image, "photo.jpg", "0"), args.repeat)
            square_m, square_b, square = timed(lambda: face_square(photo), args.repeat)
            translate_batch(model, [square], request)  # warm-up: the first call allocates
            # The model on the square: resized to the model's size, its change applied at the square's size.
            model_m, model_b, simulated = timed(lambda: translate_batch(model, [square], request)[0], args.repeat)
            paste_m, paste_b, patch = timed(lambda: paste(photo, simulated), args.repeat)
            comp_m, comp_b, _ = timed(lambda: paste(photo, simulated, CompositeOptions()), args.repeat)

            def encode() -> int:
                area = view_box(photo, "face")
                shown_before = display(region(photo, area), "face")
                shown_after = display(region(photo, area, patch), "face")
                changed = difference(shown_before, shown_after)
                blobs = [png_bytes(shown_before), png_bytes(shown_after), png_bytes(changed)]
                return sum(len(b) for b in blobs)

            encode_m, encode_b, encoded = timed(encode, args.repeat)
            digest_m, digest_b, _ = timed(lambda: pixels_sha256(simulated_photo(photo, patch)), args.repeat)
            crop_m, crop_b = face_m + square_m, face_b + square_b
            print(f"\nsplit (face square {photo.side} px, shown {photo.size[0]}x{photo.size[1]}):")
            line("decode", decode_m, decode_b)
            line("crop (face box + square)", crop_m, crop_b, f"face box {face_m * 1000:.0f}")
            line("model (on the face square)", model_m, model_b, "resize, forward, change at its size")
            line("paste", paste_m, paste_b, f"with composite {comp_m * 1000:.0f} ms")
            line("encode (face view, 3 PNGs)", encode_m, encode_b, f"{encoded / 2**20:.1f} MB")
            total = decode_m + crop_m + model_m + paste_m + encode_m
            line("sum", total, decode_b + crop_b + model_b + paste_b + encode_b,
                 f"model {model_m / total:.0%} of it, the rest {1 - model_m / total:.0%}")
            if args.audit:
                line("audit: sha256 of the output", digest_m, digest_b)
            return square

        with ThreadPoolExecutor(1) as worker:
            square = worker.submit(split).result()
        main_m, main_b, _ = timed(lambda: translate_batch(model, [square], request), args.repeat)
        line("model, in the main thread instead", main_m, main_b)

        # -- end to end through the app --------------------------------------------------------
        from starlette.testclient import TestClient

        from svai.serve.app import create_app
        from svai.serve.audit import AuditLog

        audit = AuditLog(Path(scratch) / "audit.jsonl") if args.audit else None
        client = TestClient(create_app(simulator, private.path, audit, hosts=None))
        body = {"model": served[0].id, "procedures": list(settings.procedures), "intensity": 1.0}

        def round_trip() -> dict:
            token = client.post("/api/photos", content=data, headers={"X-Filename": "photo.jpg"}).json()["photo"]
            answer = client.post("/api/simulate", json={**body, "photo": token}).json()
            for kind in ("before", "after", "difference"):
                response = client.get(answer["images"]["face"][kind])
                assert response.status_code == 200
            return answer

        round_trip()  # warm-up
        trip_m, trip_b, _ = timed(round_trip, args.repeat)
        print("\nend to end (HTTP, in process):")
        line("upload -> result shown", trip_m, trip_b)
        token = client.post("/api/photos", content=data, headers={"X-Filename": "photo.jpg"}).json()["photo"]

        def again() -> None:
            answer = client.post("/api/simulate", json={**body, "photo": token, "intensity": 0.5}).json()
            for kind in ("after", "difference"):
                client.get(answer["images"]["face"][kind])

        again_m, again_b, _ = timed(again, args.repeat)
        line("new settings, same photo", again_m, again_b)

        def two_tabs() -> int:
            done: list[int] = []

            def tab() -> None:
                answer = client.post("/api/simulate", json={**body, "photo": token}).json()
                done.append(client.get(answer["images"]["face"]["after"]).status_code)

            threads = [threading.Thread(target=tab) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return done.count(200)

        tabs_m, tabs_b, answered = timed(two_tabs, args.repeat)
        line("two tabs at once", tabs_m, tabs_b, f"{answered} of 2 answered")
        # A fresh result: the app holds the last 16 only.
        export_url = client.post("/api/simulate", json={**body, "photo": token}).json()["images"]["face"]["export"]

        def save() -> int:
            response = client.get(export_url)
            assert response.status_code == 200, response.text
            return len(response.content)

        save_m, save_b, saved = timed(save, max(1, args.repeat // 2))
        line("save (stamped PNG, face view)", save_m, save_b, f"{saved / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
