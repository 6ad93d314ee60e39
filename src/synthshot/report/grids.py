"""Image grids of synthetic items: one row per item, columns positive | negative | result; each row
is labelled with its number, its class and the negative class it was steered away from.

The items come from the generation manifest (`finished_records`), so what each column shows is
read from the record, never guessed from paths. A column an item has no image for (text mode has
no positive, single mode no negative) or whose file is gone shows a grey tile saying so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 128
HEADER = 22
ROW_LABEL = 136  # the row's number, class and negative class
GAP = 4
COLUMNS = ("positive", "negative", "result")
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (225, 225, 225)


@dataclass(frozen=True)
class GridItem:
    """One row of a grid, from one manifest record."""

    id: str
    class_name: str
    negative_class: str | None
    prompt: str
    seed: int | None
    mode: str | None
    positive: Path | None
    negative: Path | None
    result: Path

    @classmethod
    def from_record(cls, record: dict, run_folder: Path) -> GridItem:
        def path(value) -> Path | None:
            if not value:
                return None
            value = Path(value)
            return value if value.is_absolute() else run_folder / value

        return cls(
            id=str(record["id"]),
            class_name=str(record.get("class_name", record.get("class", "?"))),
            negative_class=record.get("negative_class"),
            prompt=str(record.get("prompt", "")),
            seed=record.get("seed"),
            mode=record.get("mode"),
            positive=path(record.get("positive_file", record.get("positive"))),
            negative=path(record.get("negative_file", record.get("negative"))),
            result=run_folder / record["file"],
        )


def sample_records(records: dict[str, dict], max_items: int) -> list[dict]:
    """Up to `max_items` records spread over the classes: each class's lowest index first, then
    the next, classes in name order; the same records every time."""
    by_class: dict[str, list[dict]] = {}
    for record in records.values():
        by_class.setdefault(str(record.get("class_name", record.get("class", "?"))), []).append(record)
    queues = [
        sorted(items, key=lambda r: (r.get("index") if isinstance(r.get("index"), int) else 0, str(r["id"])))
        for _, items in sorted(by_class.items())
    ]
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < max_items and any(depth < len(queue) for queue in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_items:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def grid_items(run_folder: str | Path, max_items: int) -> list[GridItem]:
    """A sample of the finished items of the generation output in `run_folder`."""
    from synthshot.generation.runner import finished_records

    run_folder = Path(run_folder)
    records = finished_records(run_folder)
    return [GridItem.from_record(record, run_folder) for record in sample_records(records, max_items)]


def _font(size: int = 12):
    return ImageFont.load_default(size=size)


def _placeholder(text: str, tile: int) -> Image.Image:
    image = Image.new("RGB", (tile, tile), PLACEHOLDER)
    draw = ImageDraw.Draw(image)
    draw.multiline_text((tile // 2, tile // 2), text, fill=(90, 90, 90), font=_font(), anchor="mm", align="center")
    return image


def _tile(path: Path | None, missing: str, tile: int) -> tuple[Image.Image, str | None]:
    """The tile of one cell and, when the image could not be shown, why."""
    if path is None:
        return _placeholder(missing, tile), None
    try:
        with Image.open(path) as image:
            image.load()
            picture = ImageOps.contain(image.convert("RGB"), (tile, tile))
    except FileNotFoundError:
        return _placeholder("file\nmissing", tile), f"{str(path)!r} is missing"
    except Image.DecompressionBombError:
        return _placeholder("too large", tile), f"{str(path)!r} is too large to decode safely"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return _placeholder("unreadable", tile), f"{str(path)!r} is not a readable image ({exc})"
    canvas = Image.new("RGB", (tile, tile), BACKGROUND)
    canvas.paste(picture, ((tile - picture.width) // 2, (tile - picture.height) // 2))
    return canvas, None


def row_label(item: GridItem, number: int) -> str:
    """The text left of a row: its number and class, then the negative class (when it has one)."""
    text = f"{number}. {item.class_name}"
    return text + (f"\nneg: {item.negative_class}" if item.negative_class else "")


def _fit(text: str, font, width: int) -> str:
    """`text` cut (with "...") to at most `width` pixels in `font`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def row_boxes(count: int, tile: int = TILE) -> list[tuple[float, float]]:
    """(top, height) of each row as fractions of the grid's height, for overlays on the page."""
    height = HEADER + count * (tile + GAP)
    return [((HEADER + row * (tile + GAP)) / height, tile / height) for row in range(count)]


def render_grid(items: list[GridItem], tile: int = TILE) -> tuple[Image.Image, list[str]]:
    """The grid image (a header row, then rows labelled with their number, class and negative
    class) and the problems met drawing it."""
    width = ROW_LABEL + len(COLUMNS) * (tile + GAP)
    height = HEADER + len(items) * (tile + GAP)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = _font(13)
    for column, name in enumerate(COLUMNS):
        x = ROW_LABEL + column * (tile + GAP) + tile // 2
        draw.text((x, HEADER // 2), name, fill=(0, 0, 0), font=font, anchor="mm")
    problems: list[str] = []
    for row, item in enumerate(items):
        y = HEADER + row * (tile + GAP)
        lines = [_fit(line, font, ROW_LABEL - 8) for line in row_label(item, row + 1).split("\n")]
        draw.multiline_text((4, y + tile // 2), "\n".join(lines), fill=(0, 0, 0), font=font, anchor="lm", spacing=4)
        cells = (
            _tile(item.positive, "no positive\n(text mode)", tile),
            _tile(item.negative, "no negative", tile),
            _tile(item.result, "", tile),
        )
        for column, (image, problem) in enumerate(cells):
            grid.paste(image, (ROW_LABEL + column * (tile + GAP), y))
            if problem:
                problems.append(f"row {row + 1} ({item.id}), {COLUMNS[column]}: {problem}")
    return grid, problems


def grid_png(items: list[GridItem], tile: int = TILE) -> tuple[bytes, list[str]]:
    grid, problems = render_grid(items, tile)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue(), problems
