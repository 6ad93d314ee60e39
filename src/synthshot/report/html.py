"""`synthshot report OUT`: one self-contained HTML page about a run or a sweep.

The page is `OUT/report/index.html`. Every figure is also written as a PNG next to it, and the page
embeds the same bytes as `data:` URIs, so the page alone shows everything (it can be mailed or
moved without its folder); each figure links to its PNG file for a full-size view. Nothing is
fetched from the network and the page runs no script. Every string read from a file is
HTML-escaped.

Sections: accuracy table; accuracy against shots and against images per class (when the runs
differ in them); per-class accuracy and confusion of the best entry; class similarity and the most
likely negatives; image grids positive | negative | result; config and library versions. A part
the output folder lacks (no similarity, no manifest) leaves its section with a note saying so.
"""

from __future__ import annotations

import base64
import datetime as _dt
import itertools
import json
from collections.abc import Callable, Iterable
from html import escape
from pathlib import Path
from typing import Any

from synthshot import __version__
from synthshot.errors import DataError
from synthshot.io import atomic_write_text, claim_folder, is_claimed
from synthshot.report import grids, plots
from synthshot.report.collect import (
    REPORT_DIR,
    RUN_FIELDS,
    Entry,
    Run,
    collect_runs,
    failed_runs,
    flatten,
)

INDEX = "index.html"
TOP_NEGATIVES = 3
FIELD_TITLES = {"dataset": "dataset", "shots": "shots", "images_per_class": "images per class", "backbone": "backbone"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eaf6ea; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .meta { color: #555; font-size: .9em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; margin: .6em 0; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
code { font-size: .9em; }
"""


class Raw(str):
    """HTML built here, inserted as is (everything else is escaped)."""


def _html(value: Any) -> str:
    return value if isinstance(value, Raw) else escape(str(value))


class _Number(str):
    """A formatted number: right-aligned in tables."""


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], row_classes: Iterable[str] | None = None) -> Raw:
    head = "".join(f"<th>{_html(h)}</th>" for h in headers)
    lines = []
    for row, css in zip(rows, row_classes if row_classes is not None else itertools.repeat("")):
        cells = "".join(
            f'<td class="num">{_html(c)}</td>' if isinstance(c, _Number) else f"<td>{_html(c)}</td>" for c in row
        )
        lines.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>")


def _percent(value: float | None, std: float | None = None) -> str:
    """A percentage, with ± its standard deviation over seeds when there is one."""
    if value is None:
        return _Number("–")
    return _Number(f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if isinstance(std, (int, float)) else ""))


def _note(text: str) -> Raw:
    return Raw(f'<p class="note">{escape(text)}</p>')


def _details(summary: str, body: str, open_: bool = False) -> Raw:
    return Raw(f"<details{' open' if open_ else ''}><summary>{escape(summary)}</summary>{body}</details>")


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Figures:
    """Writes each figure as a PNG under the report folder and returns its HTML."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: list[Path] = []

    def add(self, name: str, png: bytes, alt: str, caption: str = "") -> Raw:
        self.written.append(plots.save_png(self.folder / name, png))
        data = base64.b64encode(png).decode("ascii")
        caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return Raw(
            f'<figure><a href="{escape(name)}"><img src="data:image/png;base64,{data}" alt="{escape(alt)}"></a>'
            f"{caption_html}</figure>"
        )


# ---------------------------------------------------------------------------------- sections
def _reported_split(entries: list[Entry]) -> str | None:
    """The split the plots and the best entry use: test when any entry has it, else the commonest."""
    splits = [entry.split for entry in entries if entry.top1 is not None]
    if not splits:
        return None
    return "test" if "test" in splits else max(sorted(set(splits)), key=splits.count)


def _best(entries: list[Entry], split: str | None) -> Entry | None:
    candidates = [entry for entry in entries if entry.split == split and entry.top1 is not None]
    return max(candidates, key=lambda entry: entry.top1) if candidates else None


def _failed_section(failed: dict[str, str]) -> list[str]:
    """The sweep runs that failed, with their errors (their other runs are reported below)."""
    if not failed:
        return []
    rows = [(name, error) for name, error in failed.items()]
    return ["<h2 id='failed'>Failed runs</h2>",
            _note(f"{len(failed)} run(s) of this sweep failed; rerun the sweep after fixing the cause."),
            _table(["run", "error"], rows, ["failed"] * len(rows))]


def _accuracy_section(runs: list[Run], best: Entry | None) -> list[str]:
    info = {run.name: run.info for run in runs}
    rows, classes = [], []
    for run in runs:
        for entry in run.entries:
            rows.append([
                entry.run, *(str(info[entry.run].get(key, "")) for key in RUN_FIELDS), entry.stage, entry.method,
                entry.split, entry.selected_on or "", _percent(entry.top1, entry.metrics.get("top1_std")),
                _percent(entry.balanced_top1, entry.metrics.get("balanced_top1_std")),
                _Number(str(entry.metrics.get("num_images", ""))), _short(entry.params) if entry.params else "",
            ])
            classes.append("best" if entry is best else "")
    headers = ["run", *(FIELD_TITLES[key] for key in RUN_FIELDS), "stage", "method", "split", "selected on",
               "top-1 (%)", "balanced top-1 (%)", "images", "params"]
    parts = ["<h2 id='accuracy'>Accuracy</h2>", _table(headers, rows, classes)]
    if best is not None:
        parts.append(Raw(
            f"<p class='meta'>Highlighted: the best top-1 on the {escape(best.split)} split. Hyper-parameters and "
            "checkpoints are chosen on the split named under “selected on”, never on test.</p>"
        ))
    return parts


def _curves_section(runs: list[Run], split: str | None, figures: _Figures) -> list[str]:
    parts = ["<h2 id='curves'>Accuracy against shots and images per class</h2>"]
    entries = [(run, entry) for run in runs for entry in run.entries if entry.split == split and entry.top1 is not None]
    if not entries:
        return [*parts, _note("No entry has a top-1 accuracy to plot.")]
    varying = {key for key in RUN_FIELDS if len({str(run.info.get(key)) for run, _ in entries}) > 1}
    for axis, name in (("shots", "accuracy_vs_shots.png"), ("images_per_class", "accuracy_vs_images_per_class.png")):
        values = {run.info.get(axis) for run, _ in entries}
        numeric = {v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)}
        title = FIELD_TITLES[axis]
        if not numeric:
            parts.append(_note(f"The results do not record {title}: no plot against {title}."))
            continue
        if len(numeric) < 2:
            shown = ", ".join(sorted(str(v) for v in values))
            parts.append(_note(f"Every run has {title} = {shown}: no plot against {title}."))
            continue
        series: dict[str, list[tuple[float, float]]] = {}
        for run, entry in entries:
            x = run.info.get(axis)
            if x not in numeric:
                continue
            others = [f"{FIELD_TITLES[key]}={run.info.get(key)}" for key in sorted(varying - {axis})]
            label = ", ".join([f"{entry.stage}/{entry.method}", *others])
            series.setdefault(label, []).append((float(x), entry.top1, entry.metrics.get("top1_std")))
        png = plots.accuracy_curves(series, xlabel=title, title=f"top-1 on {split} against {title}")
        parts.append(figures.add(
            name, png, f"accuracy against {title}",
            f"Top-1 on the {split} split; one line per method (and per value of what else varies), through the "
            "mean where several runs share a point; error bars: ± one standard deviation over seeds.",
        ))
    return parts


def _best_section(best: Entry | None, figures: _Figures) -> list[str]:
    parts = ["<h2 id='best'>Best run: per-class accuracy and confusion</h2>"]
    if best is None:
        return [*parts, _note("No entry has a top-1 accuracy.")]
    metrics = best.metrics
    parts.append(Raw(
        f"<p>Run <b>{escape(best.run)}</b>, {escape(best.stage)}/<b>{escape(best.method)}</b> on the "
        f"{escape(best.split)} split: top-1 {_percent(best.top1)} %, balanced top-1 "
        f"{_percent(best.balanced_top1)} % ({escape(str(metrics.get('num_images', '?')))} images).</p>"
    ))
    per_class = metrics.get("per_class")
    classes = metrics.get("classes")
    if isinstance(per_class, dict) and per_class:
        parts.append(figures.add("best_per_class.png", plots.per_class_accuracy(per_class), "per-class accuracy"))
        support = metrics.get("support") if isinstance(metrics.get("support"), dict) else {}
        rows = [[name, _percent(acc), _Number(str(support.get(name, "")))] for name, acc in per_class.items()]
        table = _table(["class", "top-1 (%)", "test images"], rows)
        parts.append(_details(f"per-class table ({len(rows)} classes)", table, open_=len(rows) <= 20))
    else:
        parts.append(_note("The best entry records no per-class accuracy."))
    confusion = metrics.get("confusion")
    square = isinstance(classes, list) and isinstance(confusion, list) and len(confusion) == len(classes) > 0 and all(
        isinstance(row, list) and len(row) == len(classes) for row in confusion
    )
    if square:
        parts.append(figures.add(
            "best_confusion.png", plots.confusion_heatmap(classes, confusion), "confusion matrix",
            "Rows: true class, columns: predicted class; colours are row fractions, numbers are counts.",
        ))
    else:
        parts.append(_note("The best entry records no confusion matrix."))
    return parts


def _distinct(folders: Iterable[Path | None]) -> list[Path]:
    seen: list[Path] = []
    for folder in folders:
        if folder is not None and folder not in seen:
            seen.append(folder)
    return seen


def _where(folder: Path, out: Path) -> str:
    if folder != out and out not in folder.parents:
        return str(folder)
    relative = folder.relative_to(out).as_posix()
    return "the output folder" if relative == "." else relative


def _similarity_section(runs: list[Run], out: Path, figures: _Figures, echo: Callable) -> list[str]:
    parts = ["<h2 id='similarity'>Class similarity and the most likely negatives</h2>"]
    folders = _distinct(run.similarity_dir for run in runs)
    if not folders:
        return [*parts, _note(
            "No similarity/similarity.safetensors in this output folder: the similarity stage did not run "
            "(text or single mode, or uniform sampling), so this section is left out."
        )]
    from synthshot.generation.similarity import SimilarityResult

    for number, folder in enumerate(folders, start=1):
        where = _where(folder, out)
        try:
            result = SimilarityResult.load(folder)
        except DataError as exc:
            echo(f"warning: similarity in {where} left out: {exc}")
            parts.append(_note(f"The similarity in {where} could not be read: {exc}"))
            continue
        count = len(result.classes)
        parts.append(Raw(
            f"<p class='meta'>{escape(where)}: {count} classes, method {escape(result.method)}, "
            f"τ = {result.temperature:g}, negatives drawn by {escape(result.sampling)}"
            f"{', model ' + escape(result.model_id) if result.model_id else ''}.</p>"
        ))
        parts.append(figures.add(
            f"similarity_{number}.png", plots.similarity_heatmap(result.classes, result.similarity.numpy()),
            f"class similarity ({where})",
        ))
        k = min(TOP_NEGATIVES, count - 1)
        if k < 1:
            continue
        rows = [
            [name, *(f"{other} ({100 * p:.1f} %)" for other, p in negatives)]
            for name, negatives in result.top_negatives(k).items()
        ]
        table = _table(["class", *(f"negative {rank}" for rank in range(1, k + 1))], rows)
        parts.append(_details(
            f"the {k} most likely negatives of each class (probability P[a, b])", table, open_=count <= 30,
        ))
    return parts


def _grids_section(runs: list[Run], out: Path, max_items: int, figures: _Figures) -> list[str]:
    parts = ["<h2 id='images'>Synthetic images: positive | negative | result</h2>"]
    folders = _distinct(run.images_dir for run in runs)
    if not folders:
        return [*parts, _note("No manifest.jsonl in this output folder: no images were generated, so no grid.")]
    if max_items < 1:
        return [*parts, _note("Grids are off (max_grid_items < 1).")]
    for number, folder in enumerate(folders, start=1):
        where = _where(folder, out)
        items = grids.grid_items(folder, max_items)
        if not items:
            parts.append(_note(f"The manifest in {where} lists no finished image."))
            continue
        png, problems = grids.grid_png(items)
        parts.append(figures.add(
            f"grid_{number}.png", png, f"synthetic images ({where})",
            f"{where}: {len(items)} items, rows numbered as in the table below.",
        ))
        rows = [
            [_Number(str(row)), item.id, item.class_name, item.negative_class or "", item.mode or "",
             _Number(str(item.seed)) if item.seed is not None else "", item.prompt]
            for row, item in enumerate(items, start=1)
        ]
        parts.append(_table(["row", "id", "class", "negative class", "mode", "seed", "prompt"], rows))
        parts += [_note(problem) for problem in problems]
    return parts


def _config_section(runs: list[Run], out: Path) -> list[str]:
    import yaml

    parts = ["<h2 id='config'>Config and versions</h2>"]
    if len(runs) > 1:
        flat = {run.name: flatten(run.config) for run in runs}
        keys = sorted({key for values in flat.values() for key in values})
        differing = [key for key in keys if len({_short(values.get(key, "—")) for values in flat.values()}) > 1]
        if differing:
            rows = [[run.name, *(_short(flat[run.name].get(key, "—"), 60) for key in differing)] for run in runs]
            parts += ["<h3>Where the runs' configs differ</h3>", _table(["run", *differing], rows)]
        else:
            parts.append(_note("All runs have the same config."))
    for run in runs:
        if run.config_file is not None:
            try:
                text, source = run.config_file.read_text(encoding="utf-8"), _where(run.config_file, out)
            except OSError as exc:
                text, source = f"(unreadable: {exc})", _where(run.config_file, out)
        elif run.config:
            text, source = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True), "results.json"
        else:
            parts.append(_note(f"Run {run.name} records no config."))
            continue
        body = f"<pre>{escape(text)}</pre>"
        parts.append(_details(f"config of {run.name} ({source})", body, open_=len(runs) == 1))

    packages = sorted({package for run in runs for package in run.versions})
    if not packages:
        return [*parts, _note("The results record no library versions.")]
    rows = []
    for package in packages:
        by_version: dict[str, list[str]] = {}
        for run in runs:
            by_version.setdefault(run.versions.get(package, "—"), []).append(run.name)
        if len(by_version) == 1:
            rows.append([package, next(iter(by_version))])
        else:
            rows.append([package, "; ".join(f"{v} ({', '.join(names)})" for v, names in by_version.items())])
    parts += ["<h3>Library versions</h3>", _table(["package", "version"], rows)]
    return parts


# -------------------------------------------------------------------------------------- page
def write_report(out: str | Path, *, max_grid_items: int = 12, echo: Callable[[str], Any] = print) -> Path:
    """Write `OUT/report/index.html` (and its PNGs) about the run or sweep in `out`; return its path.

    Raises DataError when `out` holds no results.json.
    """
    out = Path(out).resolve()
    runs = collect_runs(out)
    folder = out / REPORT_DIR
    if not is_claimed(out):  # results gathered by hand: then the report folder itself must be synthshot's
        claim_folder(folder, "report folder")
    figures = _Figures(folder)
    entries = [entry for run in runs for entry in run.entries]
    split = _reported_split(entries)
    best = _best(entries, split)

    # 1. Numbers, then 2. plots over the sweep, 3. the best entry in detail, 4.-5. what generation
    # used and made, 6. how to reproduce it.
    body: list[str] = []
    body += _failed_section(failed_runs(out))
    body += _accuracy_section(runs, best)
    body += _curves_section(runs, split, figures)
    body += _best_section(best, figures)
    body += _similarity_section(runs, out, figures, echo)
    body += _grids_section(runs, out, max_grid_items, figures)
    body += _config_section(runs, out)

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    kind = "sweep" if len(runs) > 1 else "run"
    title = f"synthshot report: {out.name}"
    contents = " · ".join(
        f"<a href='#{anchor}'>{label}</a>"
        for anchor, label in (("accuracy", "accuracy"), ("curves", "curves"), ("best", "best run"),
                              ("similarity", "similarity"), ("images", "images"), ("config", "config"))
    )
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<p class='meta'>{escape(str(out))} · {kind} of {len(runs)} run(s), {len(entries)} result(s) · "
        f"written {escape(created)} by synthshot {escape(__version__)}</p><nav>{contents}</nav>"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = folder / INDEX
    atomic_write_text(path, page)
    echo(f"report: {path} ({len(runs)} run(s), {len(figures.written)} figure(s))")
    return path
