"""The face layer on one core: detection + landmarks and identity per photo, and how many
built-in faces get landmarks.

Run: .venv/bin/python bench/bench_face.py [--weights-dir DIR] [--repeats N] [--faces N]
Prints figures and asserts nothing. Targets: detection + landmarks <= 60 ms per photo,
identity <= 30 ms, landmarks on >= 97 % of the built-in faces at 128 px.
"""

from __future__ import annotations

import os

# One core: set before numpy, OpenCV and MediaPipe load their thread pools.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _ms(action, repeats: int) -> tuple[float, float]:
    """(median, best) milliseconds of `action` over `repeats` runs after one warm-up."""
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", default=None, help="folder with the face weights (default: svai's lookup)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--faces", type=int, default=300, help="built-in faces to look for landmarks on")
    args = parser.parse_args()

    import cv2
    from skimage import data

    from svai.data.synthetic import generate_pairs
    from svai.face import FaceFinder
    from svai.face.identity import IdentityScorer

    cv2.setNumThreads(1)
    astronaut = data.astronaut()
    phone = np.asarray(Image.fromarray(astronaut).resize((4032, 3024), Image.Resampling.BICUBIC))
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    group = np.concatenate([astronaut, camera], axis=1)
    with FaceFinder(args.weights_dir) as finder:
        scorer = IdentityScorer(args.weights_dir)
        print(f"one core, median (best) of {args.repeats}")
        for name, photo in (("astronaut 512 px", astronaut), ("12 MP (4032x3024)", phone), ("two faces", group)):
            faces = finder.find(photo)
            median, best = _ms(lambda: finder.find(photo), args.repeats)
            print(f"  detection + landmarks, {name}: {median:.1f} ms ({best:.1f}), {len(faces)} face(s)")
        points = finder.find(astronaut)[0].landmarks
        median, best = _ms(lambda: scorer.embed(astronaut, points), args.repeats)
        print(f"  identity (align + embed), one face: {median:.1f} ms ({best:.1f})")
        for size in (128, 64):
            pairs = list(generate_pairs(args.faces, size, seed=0))
            start = time.perf_counter()
            found = sum(bool(finder.find(pair.before)) for pair in pairs)
            per = (time.perf_counter() - start) * 1000 / len(pairs)
            print(f"  built-in faces at {size} px: landmarks on {found}/{len(pairs)} ({100 * found / len(pairs):.1f} %), "
                  f"{per:.1f} ms each")


if __name__ == "__main__":
    main()
