"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display) and returned as
PNG bytes; `save_png` writes them atomically.

Figures grow with the number of classes up to a cap; past a few dozen classes the tick labels are
left out (the page lists them in tables instead).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthshot.io import atomic_write_bytes

DPI = 100
MAX_INCHES = 14.0
MAX_LABELLED_CLASSES = 40  # more classes than this: no tick labels on matrices
MAX_ANNOTATED_CELLS = 15  # up to this many classes: values written in the cells
MAX_BARS = 60  # per-class accuracy: the lowest and highest MAX_BARS / 2 beyond this


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _label(text: str) -> str:
    """Text shown as typed: a `$` would otherwise start matplotlib's mathtext."""
    return str(text).replace("$", r"\$")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def save_png(path: str | Path, png: bytes) -> Path:
    path = Path(path)
    atomic_write_bytes(path, png)
    return path


def accuracy_curves(
    series: dict[str, list[tuple]], *, xlabel: str, ylabel: str = "top-1 accuracy (%)", title: str = ""
) -> bytes:
    """One line per series through the mean accuracy at each x; every point is also marked.

    `series[label]` lists (x, accuracy) or (x, accuracy, std) points, accuracy and std in [0, 1];
    several points may share an x (runs that differ in something else). A point with a std (the
    spread over seeds) gets an error bar of ± std.
    """
    figure = _figure(6.4, 4.2)
    axes = figure.add_subplot()
    xs_all: set[float] = set()
    for label, points in series.items():
        xs = sorted({p[0] for p in points})
        xs_all.update(xs)
        means = [100 * float(np.mean([p[1] for p in points if p[0] == x])) for x in xs]
        spreads = []
        for x in xs:
            at = [p for p in points if p[0] == x]
            spreads.append(100 * float(at[0][2]) if len(at) == 1 and len(at[0]) > 2 and at[0][2] is not None else 0.0)
        if any(spreads):
            line = axes.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=_label(label)).lines[0]
        else:
            (line,) = axes.plot(xs, means, marker="o", label=_label(label))
        if len(points) > len(xs):
            axes.scatter([p[0] for p in points], [100 * p[1] for p in points], s=12, color=line.get_color(), alpha=0.5)
    axes.set_xticks(sorted(xs_all))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def _matrix(
    matrix: np.ndarray, classes: Sequence[str], *, title: str, colorbar: str, cmap: str, vmin=None, vmax=None,
    xlabel: str = "", ylabel: str = "", annotations: np.ndarray | None = None, fmt: str = "g",
) -> bytes:
    """A class-by-class matrix; `annotations` (same shape) are written in the cells when there are
    few classes."""
    count = len(classes)
    side = 3.0 + 0.28 * count
    figure = _figure(side + 1.5, side)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    figure.colorbar(image, ax=axes, label=colorbar, shrink=0.8)
    if count <= MAX_LABELLED_CLASSES:
        axes.set_xticks(range(count), labels=[_label(c) for c in classes], rotation=90, fontsize="small")
        axes.set_yticks(range(count), labels=[_label(c) for c in classes], fontsize="small")
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    if annotations is not None and 0 < count <= MAX_ANNOTATED_CELLS:
        middle = (np.nanmax(matrix) + np.nanmin(matrix)) / 2
        for row in range(count):
            for column in range(count):
                axes.text(
                    column, row, format(annotations[row, column], fmt), ha="center", va="center",
                    fontsize="x-small", color="white" if matrix[row, column] > middle else "black",
                )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return _png(figure)


def similarity_heatmap(classes: Sequence[str], similarity: np.ndarray) -> bytes:
    """Class-to-class cosine similarity S (DIPSY Sec. 3.3), rows and columns in `classes` order."""
    similarity = np.asarray(similarity, dtype=np.float64)
    return _matrix(
        similarity, classes, title="class similarity S", colorbar="cosine", cmap="viridis",
        annotations=similarity, fmt=".2f",
    )


def confusion_heatmap(classes: Sequence[str], confusion: Sequence[Sequence[int]]) -> bytes:
    """Confusion counts[true, predicted] with each row scaled to sum to 1 for the colours."""
    counts = np.asarray(confusion, dtype=np.float64).reshape(len(classes), len(classes))
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return _matrix(
        rates, classes, title="confusion (row-normalised)", colorbar="fraction of the true class", cmap="Blues",
        vmin=0.0, vmax=1.0, xlabel="predicted", ylabel="true", annotations=counts.astype(np.int64), fmt="d",
    )


def per_class_accuracy(per_class: dict[str, float | None]) -> bytes:
    """Horizontal bars of each class's accuracy, lowest first; classes without test images are left
    out, and past MAX_BARS classes only the lowest and highest halves are drawn."""
    ranked = sorted(((acc, name) for name, acc in per_class.items() if acc is not None), key=lambda t: (t[0], t[1]))
    title = "per-class accuracy"
    if len(ranked) > MAX_BARS:
        half = MAX_BARS // 2
        title += f" (lowest and highest {half} of {len(ranked)} classes)"
        ranked = ranked[:half] + ranked[-half:]
    figure = _figure(7.0, 1.2 + 0.22 * max(len(ranked), 1))
    axes = figure.add_subplot()
    positions = np.arange(len(ranked))
    axes.barh(positions, [100 * acc for acc, _ in ranked], color="tab:blue")
    axes.set_yticks(positions, labels=[_label(name) for _, name in ranked], fontsize="small")
    axes.invert_yaxis()  # lowest on top
    axes.set_xlim(0, 100)
    axes.set_xlabel("top-1 accuracy (%)")
    axes.set_title(title)
    axes.grid(True, axis="x", alpha=0.3)
    return _png(figure)
