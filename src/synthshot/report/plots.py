"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display) and returned as
PNG bytes; `save_png` writes them atomically.

Figures grow with the number of classes up to a cap; past a few dozen classes the tick labels are
left out (the page lists them in tables instead), and past MAX_ANNOTATED_CELLS classes the cells
carry no numbers and the similarity's classes are ordered by clustering, so that similar classes
sit together. Legends sit outside the axes; each series has its own colour and marker, and series
are drawn a little apart along x, so that equal lines never hide each other.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthshot.io import atomic_write_bytes

DPI = 100
MAX_INCHES = 14.0
MAX_LABELLED_CLASSES = 40  # more classes than this: no tick labels on matrices
MAX_ANNOTATED_CELLS = 30  # up to this many classes: values written in the cells
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
           "tab:olive", "tab:cyan")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")  # 12: with 10 colours, 60 distinct pairs
PANELS_PER_ROW = 3
MAX_BARS = 60  # per-class accuracy: the lowest and highest MAX_BARS / 2 beyond this


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def series_styles(count: int) -> list[tuple[str, str]]:
    """(colour, marker) of each of `count` series: every pair distinct up to 60 series."""
    return [(COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]) for i in range(count)]


def _dodge(count: int, xs: Sequence[float]):
    """x -> x moved a little for series i of `count`, so that equal series stay visible: along a
    log axis (factors) when the values span a factor of 4 or more, else linearly."""
    xs = [float(x) for x in xs] or [0.0]
    low, high = min(xs), max(xs)
    logarithmic = low > 0 and high / low >= 4
    span = math.log2(high / low) if logarithmic else (high - low) or 1.0
    width = 0.06 * span if count > 1 else 0.0

    def move(i: int, x: float) -> float:
        offset = (i / (count - 1) - 0.5) * width if count > 1 else 0.0
        return x * 2 ** offset if logarithmic else x + offset

    return move, logarithmic


def _ticks(axes, xs: Sequence[float], logarithmic: bool) -> None:
    if logarithmic:
        axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(xs), labels=[f"{x:g}" for x in sorted(xs)])
    axes.minorticks_off()


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


def accuracy_figure(
    panels: dict[str, dict[str, list[tuple]]], *, xlabel: str, ylabel: str = "top-1 accuracy (%)", title: str = ""
):
    """One panel per method (`panels[method]`), one line per series in each through the mean
    accuracy at each x; every point is marked, and one legend beside the panels names the series.

    `panels[method][label]` lists (x, accuracy) or (x, accuracy, std) points, accuracy and std in
    [0, 1]; several points may share an x (runs that differ in something else). A point with a std
    (the spread over seeds) gets an error bar of ± std. A series keeps its colour and marker in
    every panel.
    """
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    styles = dict(zip(labels, series_styles(len(labels))))
    count = max(len(panels), 1)
    columns = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    legend_width = 2.6 if len(labels) > 1 or any(panels) else 0.0
    figure = _figure(4.4 * columns + legend_width, 3.6 * rows + 0.4, layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    xs_all = sorted({float(p[0]) for series in panels.values() for points in series.values() for p in points})
    move, logarithmic = _dodge(len(labels), xs_all)
    handles = {}
    for number, (method, series) in enumerate(panels.items()):
        axes = grid[number // columns][number % columns]
        for label, points in series.items():
            index = labels.index(label)
            colour, marker = styles[label]
            xs = sorted({float(p[0]) for p in points})
            means = [100 * float(np.mean([p[1] for p in points if float(p[0]) == x])) for x in xs]
            spreads = []
            for x in xs:
                at = [p for p in points if float(p[0]) == x]
                one = len(at) == 1 and len(at[0]) > 2 and at[0][2] is not None
                spreads.append(100 * float(at[0][2]) if one else 0.0)
            shifted = [move(index, x) for x in xs]
            if any(spreads):
                container = axes.errorbar(shifted, means, yerr=spreads, marker=marker, color=colour, capsize=3,
                                          label=_label(label), markersize=5)
                line = container.lines[0]
            else:
                (line,) = axes.plot(shifted, means, marker=marker, color=colour, label=_label(label), markersize=5)
            handles.setdefault(label, line)
            if len(points) > len(xs):
                axes.scatter([move(index, float(p[0])) for p in points], [100 * p[1] for p in points], s=12,
                             color=colour, marker=marker, alpha=0.4)
        _ticks(axes, xs_all, logarithmic)
        axes.set_xlabel(xlabel)
        if number % columns == 0:
            axes.set_ylabel(ylabel)
        if method:
            axes.set_title(_label(method), fontsize="medium")
        axes.grid(True, alpha=0.3)
    for number in range(len(panels), rows * columns):  # empty places of the last row
        grid[number // columns][number % columns].set_visible(False)
    if title:
        figure.suptitle(_label(title))
    if handles:
        figure.legend(list(handles.values()), [_label(label) for label in handles], loc="outside right upper",
                      fontsize="small")
    return figure


def accuracy_panels(panels: dict[str, dict[str, list[tuple]]], *, xlabel: str, ylabel: str = "top-1 accuracy (%)",
                    title: str = "") -> bytes:
    return _png(accuracy_figure(panels, xlabel=xlabel, ylabel=ylabel, title=title))


def accuracy_curves(
    series: dict[str, list[tuple]], *, xlabel: str, ylabel: str = "top-1 accuracy (%)", title: str = ""
) -> bytes:
    """`accuracy_panels` with a single panel holding every series."""
    return accuracy_panels({"": series}, xlabel=xlabel, ylabel=ylabel, title=title)


def training_figure(curves: dict[str, dict]):
    """Fine-tuning per epoch: training loss (left) and validation top-1 (right), one line per run;
    the epoch whose adapter was kept is marked with a star.

    `curves[label]` = {"epoch": [...], "loss": [...], "val_top1": [... or None], "chosen": epoch or None}.
    """
    labels = list(curves)
    styles = dict(zip(labels, series_styles(len(labels))))
    figure = _figure(10.0 + (2.8 if labels else 0.0), 3.8, layout="constrained")
    loss_axes, val_axes = figure.subplots(1, 2)
    handles = []
    any_val = False
    for label, curve in curves.items():
        colour, marker = styles[label]
        epochs = list(curve.get("epoch", []))
        (line,) = loss_axes.plot(epochs, curve.get("loss", []), marker=marker, color=colour, markersize=4,
                                 label=_label(label))
        handles.append(line)
        val = [(e, 100 * v) for e, v in zip(epochs, curve.get("val_top1") or []) if v is not None]
        if val:
            any_val = True
            val_axes.plot([e for e, _ in val], [v for _, v in val], marker=marker, color=colour, markersize=4)
        chosen = curve.get("chosen")
        if chosen in epochs:
            at = epochs.index(chosen)
            loss_axes.plot([chosen], [curve["loss"][at]], marker="*", markersize=14, color=colour,
                           markeredgecolor="black", linestyle="none")
            found = [v for e, v in val if e == chosen]
            if found:
                val_axes.plot([chosen], found, marker="*", markersize=14, color=colour, markeredgecolor="black",
                              linestyle="none")
    from matplotlib.lines import Line2D

    star = Line2D([], [], marker="*", markersize=12, color="white", markeredgecolor="black", linestyle="none")
    for axes, ylabel in ((loss_axes, "training loss"), (val_axes, "validation top-1 (%)")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    if not any_val:
        val_axes.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=val_axes.transAxes,
                      color="#666")
    loss_axes.set_title("training loss per epoch", fontsize="medium")
    val_axes.set_title("validation accuracy per epoch", fontsize="medium")
    if handles:
        figure.legend([*handles, star], [*(_label(label) for label in labels), "chosen epoch"],
                      loc="outside right upper", fontsize="small")
    return figure


def training_curves(curves: dict[str, dict]) -> bytes:
    return _png(training_figure(curves))


def scatter_figure(series: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str, title: str = ""):
    """Points (x, accuracy in [0, 1]) per series, each series its colour and marker, legend beside."""
    labels = list(series)
    styles = dict(zip(labels, series_styles(len(labels))))
    figure = _figure(6.4 + 2.6, 4.2, layout="constrained")
    axes = figure.add_subplot()
    for label, points in series.items():
        colour, marker = styles[label]
        ordered = sorted(points)
        axes.plot([p[0] for p in ordered], [100 * p[1] for p in ordered], marker=marker, color=colour,
                  linestyle=":", label=_label(label))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(_label(title), fontsize="medium")
    if labels:
        figure.legend(loc="outside right upper", fontsize="small")
    return figure


def scatter_plot(series: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str, title: str = "") -> bytes:
    return _png(scatter_figure(series, xlabel=xlabel, ylabel=ylabel, title=title))


def _text_colour(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell's colour)."""
    red, green, blue = rgba[:3]
    return "white" if 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5 else "black"


def _matrix_figure(
    matrix: np.ndarray, classes: Sequence[str], *, title: str, colorbar: str, cmap: str, vmin=None, vmax=None,
    xlabel: str = "", ylabel: str = "", annotations: Sequence[Sequence[str]] | None = None,
):
    """A class-by-class matrix; `annotations` (cell texts, same shape) are written in the cells
    when there are few classes, each black or white as the cell's colour needs."""
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
        for row in range(count):
            for column in range(count):
                colour = _text_colour(image.cmap(image.norm(matrix[row, column])))
                axes.text(column, row, annotations[row][column], ha="center", va="center", fontsize="x-small",
                          color=colour)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return figure


def cell_decimals(values: np.ndarray) -> int:
    """Decimals that tell the values apart: 2 for a range of 0.1 or more, one more per factor of ten
    narrower (0.990-1.000: 3), at most 4."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    if span <= 0:
        return 2
    return int(min(4, max(2, 1 - math.floor(math.log10(span)))))


def cluster_order(similarity: np.ndarray) -> list[int]:
    """An order of the classes that puts similar classes side by side: average-linkage
    agglomerative clustering on the similarity (no scipy), each merge joining the two clusters at
    their most similar ends."""
    matrix = np.array(similarity, dtype=np.float64)
    count = matrix.shape[0]
    if count < 3:
        return list(range(count))
    matrix = np.nan_to_num((matrix + matrix.T) / 2, nan=-np.inf)
    original = matrix.copy()
    links = matrix.copy()
    np.fill_diagonal(links, -np.inf)
    sizes = np.ones(count)
    leaves: dict[int, list[int]] = {i: [i] for i in range(count)}
    alive = np.ones(count, dtype=bool)
    for _ in range(count - 1):
        flat = int(np.argmax(links))
        a, b = divmod(flat, count)
        if not (alive[a] and alive[b]) or a == b:  # only when everything left is -inf
            a, b = [int(i) for i in np.flatnonzero(alive)[:2]]
        first, second = leaves[a], leaves[b]
        # The four ways to join two chains: keep the one whose touching ends are most similar.
        joins = [(first, second), (first, second[::-1]), (first[::-1], second), (first[::-1], second[::-1])]
        left, right = max(joins, key=lambda pair: original[pair[0][-1], pair[1][0]])
        leaves[a] = left + right
        del leaves[b]
        merged = (sizes[a] * links[a] + sizes[b] * links[b]) / (sizes[a] + sizes[b])
        sizes[a] += sizes[b]
        links[a], links[:, a] = merged, merged
        links[b], links[:, b] = -np.inf, -np.inf
        links[a, a] = -np.inf
        alive[b] = False
    return leaves[int(np.flatnonzero(alive)[0])]


def similarity_figure(classes: Sequence[str], similarity: np.ndarray):
    """Class-to-class cosine similarity S (DIPSY Sec. 3.3): rows and columns in `classes` order up
    to MAX_ANNOTATED_CELLS classes, with the values in the cells (as many decimals as their range
    needs); beyond, ordered by `cluster_order` and without numbers."""
    similarity = np.asarray(similarity, dtype=np.float64)
    classes = list(classes)
    title = "class similarity S"
    if len(classes) > MAX_ANNOTATED_CELLS:
        order = cluster_order(similarity)
        similarity = similarity[np.ix_(order, order)]
        classes = [classes[i] for i in order]
        title += " (classes ordered by clustering)"
    decimals = cell_decimals(similarity)
    texts = [[f"{value:.{decimals}f}" for value in row] for row in similarity]
    return _matrix_figure(similarity, classes, title=title, colorbar="cosine", cmap="viridis", annotations=texts)


def similarity_heatmap(classes: Sequence[str], similarity: np.ndarray) -> bytes:
    return _png(similarity_figure(classes, similarity))


def confusion_heatmap(classes: Sequence[str], confusion: Sequence[Sequence[int]]) -> bytes:
    """Confusion counts[true, predicted] with each row scaled to sum to 1 for the colours."""
    counts = np.asarray(confusion, dtype=np.float64).reshape(len(classes), len(classes))
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    texts = [[str(int(value)) for value in row] for row in counts]
    return _png(_matrix_figure(
        rates, classes, title="confusion (row-normalised)", colorbar="fraction of the true class", cmap="Blues",
        vmin=0.0, vmax=1.0, xlabel="predicted", ylabel="true", annotations=texts,
    ))


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
