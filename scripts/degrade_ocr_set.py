#!/usr/bin/env python3
"""Makes degraded copies of an OCR data set (the `shared/data/handwriting-dev/` format:
`transcripts.jsonl` with `id`, `image`, `text`) to measure page preprocessing on.

    python3 scripts/degrade_ocr_set.py ../shared/data/handwriting-dev /tmp/hw-degraded
    examiner eval-ocr --data /tmp/hw-degraded/skew --engine ppocr,auto

The dev pages are flatbed scans, and no phone photos with transcripts exist, so each kind of
damage a phone photo does is imitated on its own (one folder per kind) and all together
(`photo`). Every folder gets a copy of `transcripts.jsonl`: the text on a page does not change.
Write the output outside the repository: derived images of the data set are not committed.
Seeded, so the same input gives the same pages. Needs Pillow and numpy.

Kinds:
  skew         turned 2-6 degrees either way (white fill, canvas grown to keep every corner)
  shadow       lit unevenly: a linear gradient down to 40% brightness at an angle, plus a
               soft dark blob (a hand or phone shadow)
  perspective  the page on a white margin, on a darker textured table, seen at an angle
               (corners moved up to 9% of the size)
  noise        Gaussian sensor noise (sigma 22) and 0.3% salt and pepper, saved as JPEG q 80
  photo        perspective + shadow + noise together (as a phone photo of a page)
"""
import json
import math
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageFilter

KINDS = ["skew", "shadow", "perspective", "noise", "photo"]


def skew(img, rng):
    angle = rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0])
    return img.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=255)


def shadow(img, rng):
    a = np.asarray(img, dtype=np.float32)
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    d = (xx - w / 2) * math.cos(theta) + (yy - h / 2) * math.sin(theta)
    d = (d - d.min()) / max(d.max() - d.min(), 1.0)
    light = 1.0 - 0.6 * d
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    r = rng.uniform(0.15, 0.3) * max(w, h)
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
    light *= 1.0 - 0.35 * blob
    return Image.fromarray(np.clip(a * light, 0, 255).astype(np.uint8))


def homography(src, dst):
    """3x3 matrix mapping the 4 points `src` to `dst`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def perspective(img, rng):
    w, h = img.size
    margin = int(0.06 * max(w, h))
    paper = Image.new("L", (w + 2 * margin, h + 2 * margin), 250)
    paper.paste(img, (margin, margin))
    pw, ph = paper.size
    border = int(0.18 * max(pw, ph))
    cw, ch = pw + 2 * border, ph + 2 * border
    # A darker table with some texture, so the page edge is a real edge, not a flat step.
    table = rng.normal(70, 12, (ch // 8 + 1, cw // 8 + 1)).clip(0, 255).astype(np.uint8)
    table = Image.fromarray(table).resize((cw, ch), Image.BILINEAR)
    table = table.filter(ImageFilter.GaussianBlur(3))
    j = 0.09
    corners = [(0, 0), (pw, 0), (pw, ph), (0, ph)]
    placed = [
        (border + x + rng.uniform(-j, j) * pw, border + y + rng.uniform(-j, j) * ph)
        for x, y in corners
    ]
    # PIL's perspective transform maps output pixels to input pixels.
    m = homography(placed, corners)
    coeffs = (m / m[2, 2]).flatten()[:8]
    mask = Image.new("L", paper.size, 255)
    warped = paper.transform((cw, ch), Image.PERSPECTIVE, coeffs, Image.BILINEAR, fillcolor=0)
    wmask = mask.transform((cw, ch), Image.PERSPECTIVE, coeffs, Image.BILINEAR, fillcolor=0)
    table.paste(warped, (0, 0), wmask)
    # A photo of a page is about as large as the scan, not 1.5 times larger.
    scale = max(w, h) / max(cw, ch) * 1.1
    return table.resize((int(cw * scale), int(ch * scale)), Image.LANCZOS)


def noise(img, rng):
    a = np.asarray(img, dtype=np.float32)
    a = a + rng.normal(0, 22, a.shape)
    salt = rng.random(a.shape)
    a[salt < 0.0015] = 0
    a[salt > 0.9985] = 255
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def photo(img, rng):
    return noise(shadow(perspective(img, rng), rng), rng)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    records = [json.loads(l) for l in open(os.path.join(src, "transcripts.jsonl")) if l.strip()]
    for kind in KINDS:
        rng = np.random.default_rng(20261203 + KINDS.index(kind))
        folder = os.path.join(out, kind)
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        shutil.copy(os.path.join(src, "transcripts.jsonl"), folder)
        for r in records:
            img = Image.open(os.path.join(src, r["image"])).convert("L")
            made = globals()[kind](img, rng)
            dest = os.path.join(folder, r["image"])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            # Same file name as the transcript names; JPEG like a phone or scanner writes.
            made.save(dest, format="JPEG", quality=80 if kind in ("noise", "photo") else 92)
        print(f"{folder}: {len(records)} pages", file=sys.stderr)


if __name__ == "__main__":
    main()
