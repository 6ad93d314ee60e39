"""A demo dataset that synthshot draws itself: one class per simple shape, so the offline
quickstart shows the whole flow with nothing downloaded.

Each image is one shape with a random fill colour, background colour, position, size and slight
rotation, drawn from a numpy Generator seeded by (seed, class index): the same seed gives the same
bytes, and a class's images do not change when the number of classes does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from synthshot.data.folders import is_hidden
from synthshot.errors import DataError
from synthshot.io import atomic_write_bytes, atomic_write_json, parse_json

SUPERSAMPLE = 4  # draw large, then shrink: smooth edges without PIL's (absent) anti-aliasing
MAX_ROTATION = 15.0  # degrees
MARKER = ".synthshot-demo.json"  # hidden, so image scans ignore it


def _regular_polygon(cx: float, cy: float, radii: list[float]) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    angles = [i * step - math.pi / 2 for i in range(len(radii))]  # first vertex straight up
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)


def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    h = 0.8 * r
    draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    draw.polygon(_regular_polygon(cx, cy, [r] * 3), fill=255)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    draw.polygon(_regular_polygon(cx, cy, [r, 0.45 * r] * 5), fill=255)


def _ring(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    inner = 0.6 * r
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    t = 0.3 * r
    draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=255)
    draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=255)


def _diamond(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    draw.polygon([(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)], fill=255)


def _stripes(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    bar = 2 * r / 5
    for k in (0, 2, 4):
        top = cy - r + k * bar
        draw.rectangle((cx - r, top, cx + r, top + bar), fill=255)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, float, float, float], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
    "diamond": _diamond,
    "stripes": _stripes,
}


def draw_shape(shape: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One RGB image of `shape` with colours, position, size and rotation drawn from `rng`."""
    background = rng.integers(0, 256, size=3)
    # Shift every channel by 96..160 (mod 256) so the shape always stands out from its background.
    fill = (background + rng.integers(96, 161, size=3)) % 256
    big = size * SUPERSAMPLE
    r = rng.uniform(0.22, 0.38) * big
    cx, cy = rng.uniform(r, big - r, size=2)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)

    mask = Image.new("L", (big, big), 0)
    SHAPES[shape](ImageDraw.Draw(mask), float(cx), float(cy), float(r))
    mask = mask.rotate(float(angle), resample=Image.Resampling.BICUBIC, center=(float(cx), float(cy)))
    mask = mask.resize((size, size), resample=Image.Resampling.LANCZOS)
    solid = Image.new("RGB", (size, size), tuple(int(c) for c in fill))
    return Image.composite(solid, Image.new("RGB", (size, size), tuple(int(c) for c in background)), mask)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def demo_layout(root: Path, classes: int, images_per_class: int) -> dict[str, list[Path]]:
    """The files a demo dataset of this shape consists of, in the order `scan_image_folder` lists them."""
    width = len(str(images_per_class - 1))  # zero-padded, so name order is index order
    return {
        shape: [root / shape / f"{shape}_{i:0{width}d}.png" for i in range(images_per_class)]
        for shape in list(SHAPES)[:classes]
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return parse_json((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or damaged: the images are simply drawn again


def _existing_entries(root: Path) -> set[Path]:
    if not root.is_dir():
        return set()
    entries = {p for p in root.iterdir() if not is_hidden(p)}
    for folder in [p for p in entries if p.is_dir()]:
        entries |= {p for p in folder.iterdir() if not is_hidden(p)}
    return entries


def make_demo_dataset(
    root: Path,
    classes: int = 4,
    images_per_class: int = 8,
    size: int = 64,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Draw the demo dataset into `root/<class>/<class>_<i>.png` and return its files per class.

    Does nothing if `root` already holds exactly these files, drawn with the same settings (a
    hidden marker file records them). A `root` holding other files is an error, so a user's own
    data is never mixed with drawn shapes.
    """
    if not 2 <= classes <= len(SHAPES):
        raise DataError(f"demo classes={classes} is out of range: choose 2 to {len(SHAPES)} ({', '.join(SHAPES)})")
    if images_per_class < 1:
        raise DataError(f"demo images_per_class={images_per_class} must be at least 1")
    if size < 16:
        raise DataError(f"demo size={size} is too small to draw a shape: use 16 pixels or more")
    root = Path(root)
    layout = demo_layout(root, classes, images_per_class)

    params = {"classes": classes, "images_per_class": images_per_class, "size": size, "seed": seed}
    expected = {root / shape for shape in layout} | {p for files in layout.values() for p in files}
    existing = _existing_entries(root)
    if existing == expected and _read_marker(root) == params:
        return layout
    unexpected = sorted(existing - expected)
    if unexpected:
        raise DataError(
            f"demo data folder {root} holds files that are not this demo dataset (e.g. {unexpected[0]}): "
            "empty the folder or choose another one"
        )

    for index, (shape, files) in enumerate(layout.items()):
        rng = np.random.default_rng([seed, index])
        for path in files:
            atomic_write_bytes(path, _png_bytes(draw_shape(shape, rng, size)))
    # Written last: its presence says every image above is complete and drawn with these settings.
    atomic_write_json(root / MARKER, params)
    return layout
