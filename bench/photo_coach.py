"""How long the photo coach takes for ten 12 MP photos (the goal: under a second on CPU).

    .venv/bin/python bench/photo_coach.py [--photos 10] [--repeat 3]

Makes ten 4000×3000 JPEGs from scikit-image's astronaut (varied crops, noise so they
compress like photos), then times `check_photos` for a person (faces looked for) and for
an object, best of `--repeat`. Prints one line per kind, as quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image
from skimage import data

from core.photo_quality import check_photos


def twelve_megapixels(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(data.astronaut())
    left, top = int(rng.integers(0, 96)), int(rng.integers(0, 64))
    photo = base.crop((left, top, left + 416, top + 312)).resize((4000, 3000), Image.Resampling.BICUBIC)
    noisy = np.asarray(photo, dtype=np.int16) + rng.integers(-12, 13, (3000, 4000, 3), dtype=np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    photos = [(twelve_megapixels(i), f"photo{i}.jpg") for i in range(args.photos)]
    megabytes = sum(len(d) for d, _ in photos) / 1e6
    for person in (True, False):
        best, cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            check_photos(photos, person=person, strip=True)
            best = min(best, time.perf_counter() - started)
            cpu = min(cpu, time.process_time() - started_cpu)
        kind = "person (faces)" if person else "object"
        print(
            f"check_photos: {args.photos} photos of 4000x3000 ({megabytes:.0f} MB JPEG), {kind}: "
            f"{best:.3f} s wall, {cpu:.3f} s CPU (all threads)"
        )


if __name__ == "__main__":
    main()
