"""`synthshot report OUT`: one self-contained HTML page about a run or a sweep.

The page is `OUT/report/index.html`. Every figure is also written as a PNG next to it, and the page
embeds the same bytes as `data:` URIs, so the page alone shows everything (it can be mailed or
moved without its folder); each figure links to its PNG file for a full-size view. Nothing is
fetched from the network and the page runs no script. Every string read from a file is
HTML-escaped.

Sections: the results in the papers' form (per dataset, methods by shots or images per class,
mean ± std over seeds, the best of each column in bold); every entry; accuracy against shots and
against images per class (one panel per method, when the runs differ in them); fine-tuning curves
(loss and validation accuracy per epoch, the kept epoch marked); per-class accuracy and confusion
of the best entry, chosen on validation where there is one; speed (each stage's seconds, rendering
per image and per class, fine-tuning images per second, and across a sweep accuracy against
rendering time); class similarity and the most likely negatives; image grids positive | negative |
result, each row labelled (seed and prompt in a tooltip) and each grid captioned by the runs that
use its set; config and library versions. A part the output folder lacks (no similarity, no
manifest) leaves its section with a note saying so; sections about stages that did not run
(fine-tuning curves, speed) are left out. Before any result (right after `generate`) the page shows
the similarity and the images.
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
    GENERATION_TIMINGS,
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
MAX_TRAINING_CURVES = 24  # lines in the fine-tuning figure; its table lists every run
FIELD_TITLES = {"dataset": "dataset", "shots": "shots", "images_per_class": "images per class", "backbone": "backbone",
                "control": "control"}
PIPELINE = ("data", "prompts", "similarity", "generate", "features", "prototypes", "finetune", "evaluate", "report")


def _title(key: str) -> str:
    return FIELD_TITLES.get(key, key)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.pivot td, table.pivot th { padding: .3em .8em; }
tr.best td { background: #eaf6ea; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.grid { position: relative; display: inline-block; max-width: 100%; }
.grid img { display: block; } .grid a.row { position: absolute; left: 0; right: 0; }
.grid a.row:hover { outline: 2px solid #f0b400; }
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


class _RawNumber(Raw, _Number):
    """A number with markup of its own (bold): right-aligned, inserted as is."""


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

    def add(self, name: str, png: bytes, alt: str, caption: str = "", rows: list[tuple[float, float, str]] = ()) -> Raw:
        """The figure's HTML; `rows` (top, height as fractions of the image, tooltip) lay a link with
        a tooltip over each row of an image grid."""
        self.written.append(plots.save_png(self.folder / name, png))
        data = base64.b64encode(png).decode("ascii")
        caption_html = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        image = f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
        if rows:
            overlays = "".join(
                f'<a class="row" href="{escape(name)}" style="top: {100 * top:.3f}%; height: {100 * height:.3f}%" '
                f'title="{escape(tip, quote=True)}"></a>'
                for top, height, tip in rows
            )
            body = f'<div class="grid"><a href="{escape(name)}">{image}</a>{overlays}</div>'
        else:
            body = f'<a href="{escape(name)}">{image}</a>'
        return Raw(f"<figure>{body}{caption_html}</figure>")


# ---------------------------------------------------------------------------------- sections
def _reported_split(entries: list[Entry]) -> str | None:
    """The split the plots and the best entry use: test when any entry has it, else the commonest."""
    splits = [entry.split for entry in entries if entry.top1 is not None]
    if not splits:
        return None
    return "test" if "test" in splits else max(sorted(set(splits)), key=splits.count)


def _best(entries: list[Entry], split: str | None) -> tuple[Entry | None, str | None]:
    """The best entry on `split` and the split it was chosen on: the highest validation top-1 of
    the entries (run, stage, method) that have one (the first on ties; test never breaks them),
    else, with no validation result anywhere, the highest top-1 on `split` itself."""
    candidates = [entry for entry in entries if entry.split == split and entry.top1 is not None]
    if not candidates:
        return None, None
    validation = {(e.run, e.stage, e.method): e for e in entries if e.split == "val" and e.top1 is not None}
    scored = [(validation[(e.run, e.stage, e.method)].top1, e) for e in candidates
              if (e.run, e.stage, e.method) in validation]
    if scored and split != "val":
        best_score = max(score for score, _ in scored)
        return next(e for score, e in scored if score == best_score), "val"
    return max(candidates, key=lambda entry: entry.top1), split


def _chosen_note(best: Entry, chosen_on: str | None) -> str:
    if best.split == "val":
        return "chosen and measured on the val split (there is no test result)"
    if chosen_on == "val":
        return (f"chosen on the val split (the highest validation top-1), its top-1 on the {best.split} split "
                "reported")
    return (f"chosen on the {best.split} split itself: no entry has a validation result, so this choice is made on "
            "the data it is measured on; read it as an upper bound, not as a result")


def _failed_section(failed: dict[str, str]) -> list[str]:
    """The sweep runs that failed, with their errors (their other runs are reported below)."""
    if not failed:
        return []
    rows = [(name, error) for name, error in failed.items()]
    return ["<h2 id='failed'>Failed runs</h2>",
            _note(f"{len(failed)} run(s) of this sweep failed; rerun the sweep after fixing the cause."),
            _table(["run", "error"], rows, ["failed"] * len(rows))]


def _accuracy_section(runs: list[Run], best: Entry | None, chosen_on: str | None) -> list[str]:
    if not any(run.entries for run in runs):
        return ["<h2 id='accuracy'>Accuracy</h2>", _note(
            "No results yet: the evaluate and finetune stages write them. This page shows what there is so far: the "
            "class similarity and the synthetic images."
        )]
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
    table = _table(headers, rows, classes)
    if len(rows) > 30:  # a sweep: the tables above summarise it; every entry stays one click away
        table = _details(f"every entry ({len(rows)} rows; the best highlighted)", table)
    parts = ["<h2 id='accuracy'>Accuracy</h2>", table]
    if best is not None:
        parts.append(Raw(
            f"<p class='meta'>Highlighted: the best entry, {escape(_chosen_note(best, chosen_on))}. "
            "Hyper-parameters and checkpoints are chosen on the split named under “selected on”, never on test.</p>"
        ))
    return parts


def _method(entry: Entry, run: Run) -> str:
    """An entry's method as tables and plots name it; a control run's method says which control."""
    control = run.info.get("control")
    return f"{entry.method} ({control})" if control else entry.method


def _varying(runs: list[Run]) -> list[str]:
    """The run parameters (`Run.params`) whose values differ between `runs`, RUN_FIELDS first."""
    params = [run.params() for run in runs]
    keys = list(dict.fromkeys([*RUN_FIELDS, *(key for p in params for key in p)]))
    return [key for key in keys if len({str(p.get(key)) for p in params}) > 1]


def _format_value(key: str, value) -> str:
    return f"{_title(key)}={value}"


def _mean_std(entries: list[Entry]) -> tuple[float, float | None, int]:
    """The cell of one or more entries: (mean top-1, its std or None, seeds). One entry keeps its own
    std over seeds; several are summarised by their mean and sample std."""
    if len(entries) == 1:
        entry = entries[0]
        seeds = entry.params.get("seeds")
        count = len(seeds) if isinstance(seeds, list) else 1
        std = _to_float(entry.metrics.get("top1_std"))
        return entry.top1, std if count > 1 else None, count
    values = [entry.top1 for entry in entries]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return mean, std, 1


def _to_float(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _pivot_section(runs: list[Run], split: str | None) -> list[str]:
    """Per dataset: methods as rows, shots (or images per class) as columns, test top-1 with
    mean ± std over seeds, the best of each column in bold; other differences between the runs
    become row columns."""
    scored = [(run, entry) for run in runs for entry in run.entries if entry.split == split and entry.top1 is not None]
    if not scored:
        return []
    parts = ["<h2 id='pivot'>Results in the papers' form</h2>"]
    by_dataset: dict[str, list[tuple[Run, Entry]]] = {}
    for run, entry in scored:
        by_dataset.setdefault(str(run.info.get("dataset", "?")), []).append((run, entry))
    for dataset, pairs in by_dataset.items():
        dataset_runs = list({id(run): run for run, _ in pairs}.values())
        varying = [key for key in _varying(dataset_runs) if key != "dataset"]
        column = "shots" if "shots" in varying else "images_per_class" if "images_per_class" in varying else "shots"
        others = [key for key in varying if key != column]
        cells: dict[tuple, dict[str, list[Entry]]] = {}
        for run, entry in pairs:
            params = run.params()
            row = (_method(entry, run), *(str(params.get(key, "")) for key in others))
            cells.setdefault(row, {}).setdefault(str(params.get(column, "")), []).append(entry)
        columns = sorted({c for row in cells.values() for c in row}, key=_sort_key)
        summary = {row: {c: _mean_std(found) for c, found in values.items()} for row, values in cells.items()}
        best = {c: max((s[c][0] for s in summary.values() if c in s), default=None) for c in columns}
        seeds = max((s[2] for values in summary.values() for s in values.values()), default=1)
        rows = []
        for row in sorted(cells, key=lambda r: (list(dict.fromkeys(k[0] for k in cells)).index(r[0]),
                                                 [_sort_key(v) for v in r[1:]])):
            line: list[Any] = [Raw(f"<b>{escape(row[0])}</b>"), *row[1:]]
            for c in columns:
                if c not in summary[row]:
                    line.append(_Number("–"))
                    continue
                mean, std, _ = summary[row][c]
                text = escape(f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else ""))
                line.append(_RawNumber(f"<b>{text}</b>" if best[c] is not None and mean >= best[c] - 1e-12 else text))
            rows.append(line)
        headers = ["method", *(_title(key) for key in others), *(_column_title(column, c) for c in columns)]
        spread = f"; mean ± std over {seeds} seeds" if seeds > 1 else ""
        parts.append(Raw(
            f"<p class='meta'>Dataset <b>{escape(dataset)}</b>: top-1 (%) on the {escape(str(split))} split by method "
            f"and {escape(_title(column))}{escape(spread)}; the best of each column in bold.</p>"
        ))
        parts.append(Raw(_table(headers, rows).replace("<table>", "<table class='pivot'>", 1)))
    return parts


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _column_title(column: str, value: str) -> str:
    if column == "shots":
        return f"{value} shot" if value == "1" else f"{value} shots"
    if column == "images_per_class":
        return f"{value} image / class" if value == "1" else f"{value} images / class"
    return f"{_title(column)}={value}"


def _curves_section(runs: list[Run], split: str | None, figures: _Figures) -> list[str]:
    parts = ["<h2 id='curves'>Accuracy against shots and images per class</h2>"]
    entries = [(run, entry) for run in runs for entry in run.entries if entry.split == split and entry.top1 is not None]
    if not entries:
        return [*parts, _note("No entry has a top-1 accuracy to plot.")]
    varying = _varying(list({id(run): run for run, _ in entries}.values()))
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
        panels: dict[str, dict[str, list[tuple]]] = {}
        for run, entry in entries:
            x = run.info.get(axis)
            if x not in numeric:
                continue
            params = run.params()
            label = ", ".join(_format_value(key, params.get(key)) for key in varying if key not in (axis, "control"))
            series = panels.setdefault(_method(entry, run), {})
            series.setdefault(label, []).append((float(x), entry.top1, entry.metrics.get("top1_std")))
        png = plots.accuracy_panels(panels, xlabel=title, title=f"top-1 on {split} against {title}")
        parts.append(figures.add(
            name, png, f"accuracy against {title}",
            f"Top-1 on the {split} split; one panel per method, one line (colour and marker) per value of what else "
            "varies, drawn a little apart so that equal lines stay visible; through the mean where several runs "
            "share a point; error bars: ± one standard deviation over seeds.",
        ))
    return parts


def _epoch_records(path: Path) -> list[dict]:
    """The per-epoch records of a fine-tuning log, the last one of each epoch."""
    from synthshot.io import read_jsonl

    records, _ = read_jsonl(path)
    epochs: dict[int, dict] = {}
    for record in records:
        epoch = record.get("epoch")
        if record.get("kind") == "epoch" and isinstance(epoch, int) and _to_float(record.get("loss")) is not None:
            epochs[epoch] = record
    return [epochs[e] for e in sorted(epochs)]


def _chosen_epoch(path: Path, records: list[dict]) -> int | None:
    """The epoch whose adapter was kept: the fine-tuning results' `selected_epoch`, else the best
    validation top-1 (the earliest on ties), else the last epoch."""
    from synthshot.results import read_results

    results = path.parent / "results.json"
    if results.is_file():
        try:
            for item in read_results(results)["results"]:
                chosen = item.get("params", {}).get("selected_epoch") if isinstance(item, dict) else None
                if isinstance(chosen, int):
                    return chosen
        except DataError:
            pass
    scored = [r for r in records if _to_float(r.get("val_top1")) is not None]
    if scored:
        return max(scored, key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]
    return records[-1]["epoch"] if records else None


def _training_section(runs: list[Run], figures: _Figures) -> list[str]:
    curves: dict[str, dict] = {}
    rows = []
    for run in runs:
        for seed, path in run.metrics_files:
            records = _epoch_records(path)
            if not records:
                continue
            label = f"{run.name} {seed}".strip()
            chosen = _chosen_epoch(path, records)
            curves[label] = {"epoch": [r["epoch"] for r in records], "loss": [r["loss"] for r in records],
                             "val_top1": [_to_float(r.get("val_top1")) for r in records], "chosen": chosen}
            at = next((r for r in records if r["epoch"] == chosen), None)
            val = _to_float(at.get("val_top1")) if at else None
            rows.append([label, _Number(str(len(records))), _Number(str(chosen) if chosen is not None else "–"),
                         _Number(f"{at['loss']:.4f}" if at else "–"), _percent(val)])
    if not curves:
        return []
    parts = ["<h2 id='training'>Fine-tuning curves</h2>"]
    drawn = dict(list(curves.items())[:MAX_TRAINING_CURVES])
    more = f" The first {len(drawn)} of {len(curves)} runs are drawn; the table lists them all." \
        if len(drawn) < len(curves) else ""
    parts.append(figures.add(
        "finetune_curves.png", plots.training_curves(drawn), "fine-tuning curves",
        "Training loss and validation top-1 per epoch (finetune/metrics.jsonl); a star marks the chosen epoch, whose "
        "adapter was kept (the best validation top-1, or the last epoch without a validation set)." + more,
    ))
    table = _table(["run", "epochs", "chosen epoch", "loss at it", "val top-1 (%) at it"], rows)
    parts.append(_details(f"chosen epoch of each fine-tuning run ({len(rows)})", table, open_=len(rows) <= 12))
    return parts


def _best_section(best: Entry | None, chosen_on: str | None, figures: _Figures) -> list[str]:
    parts = ["<h2 id='best'>Best run: per-class accuracy and confusion</h2>"]
    if best is None:
        return [*parts, _note("No entry has a top-1 accuracy.")]
    metrics = best.metrics
    parts.append(Raw(
        f"<p>Run <b>{escape(best.run)}</b>, {escape(best.stage)}/<b>{escape(best.method)}</b> on the "
        f"{escape(best.split)} split: top-1 {_percent(best.top1)} %, balanced top-1 "
        f"{_percent(best.balanced_top1)} % ({escape(str(metrics.get('num_images', '?')))} images); "
        f"{escape(_chosen_note(best, chosen_on))}.</p>"
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


def _generation_timings(folder: Path | None) -> dict | None:
    """A synthetic set's rendering record (`generate` writes it), when readable."""
    if folder is None or not (folder / GENERATION_TIMINGS).is_file():
        return None
    from synthshot.io import parse_json

    try:
        data = parse_json((folder / GENERATION_TIMINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    images, seconds = (_to_float(data.get(k)) if isinstance(data, dict) else None for k in ("images", "seconds"))
    return data if images and seconds is not None else None


def _speed_section(runs: list[Run], split: str | None, figures: _Figures) -> list[str]:
    timings = {run.name: _generation_timings(run.images_dir) for run in runs}
    training = {}
    for run in runs:
        rates = [r["images_per_s"] for _, path in run.metrics_files for r in _epoch_records(path)
                 if _to_float(r.get("images_per_s")) is not None]
        if rates:
            training[run.name] = sum(rates) / len(rates)
    if not any(run.stage_seconds for run in runs) and not any(timings.values()) and not training:
        return []
    stages = [stage for stage in PIPELINE if any(stage in run.stage_seconds for run in runs)]
    stages += sorted({stage for run in runs for stage in run.stage_seconds} - set(stages))
    rows, per_image = [], {}
    for run in runs:
        timing = timings[run.name]
        seconds = timing["seconds"] / timing["images"] if timing else None
        if seconds is not None:
            per_image[run.name] = seconds
        ipc = _to_float(run.info.get("images_per_class"))
        rows.append([
            run.name,
            *(_Number(f"{run.stage_seconds[stage]:.1f}") if stage in run.stage_seconds else _Number("–")
              for stage in stages),
            _Number(f"{seconds:.2f}" if seconds is not None else "–"),
            _Number(f"{seconds * ipc:.2f}" if seconds is not None and ipc else "–"),
            _Number(f"{training[run.name]:.1f}" if run.name in training else "–"),
        ])
    headers = ["run", *(f"{stage} (s)" for stage in stages), "generation s / image", "generation s / class",
               "fine-tuning images / s"]
    parts = ["<h2 id='speed'>Speed</h2>", _table(headers, rows), Raw(
        "<p class='meta'>Stage times: wall seconds of each stage's last run (.synthshot/stages.json; the mean over "
        "seeds), loading models included; a stage whose outputs were already there takes little. Generation: "
        "rendering seconds per image of the run's synthetic set (model loading apart; a set shared by several runs "
        "counts once), and per class for the run's images per class. Fine-tuning: training images per second, the "
        "mean over epochs (and seeds).</p>"
    )]
    if len({round(v, 6) for v in per_image.values()}) >= 2:
        series: dict[str, list[tuple[float, float]]] = {}
        for run in runs:
            if run.name not in per_image:
                continue
            for entry in run.entries:
                if entry.split == split and entry.top1 is not None:
                    series.setdefault(_method(entry, run), []).append((per_image[run.name], entry.top1))
        if series:
            parts.append(figures.add(
                "accuracy_vs_generation_time.png",
                plots.scatter_plot(series, xlabel="generation seconds per image", ylabel="top-1 accuracy (%)",
                                   title=f"top-1 on {split} against generation time"),
                "accuracy against generation time per image",
                f"Top-1 on the {split} split of each run against the rendering time per image of its synthetic set.",
            ))
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


def _users(folder: Path, runs: list[Run], varying: list[str], out: Path) -> str:
    """Which runs use the synthetic set in `folder`, by what tells the runs apart ("shots=1 ·
    images per class=2, 4"); a single run by its name."""
    users = [run for run in runs if run.images_dir == folder]
    if not users:
        return _where(folder, out)
    if not varying:
        return ", ".join(run.name for run in users)
    pieces = []
    for key in varying:
        values = list(dict.fromkeys(str(run.params().get(key, "–")) for run in users))
        pieces.append(f"{_title(key)}={', '.join(sorted(values, key=_sort_key))}")
    return " · ".join(pieces)


def _grids_section(runs: list[Run], out: Path, max_items: int, figures: _Figures) -> list[str]:
    parts = ["<h2 id='images'>Synthetic images: positive | negative | result</h2>"]
    folders = _distinct(run.images_dir for run in runs)
    if not folders:
        return [*parts, _note("No manifest.jsonl in this output folder: no images were generated, so no grid.")]
    if max_items < 1:
        return [*parts, _note("Grids are off (max_grid_items < 1).")]
    varying = [key for key in _varying(runs) if key != "control"]
    for number, folder in enumerate(folders, start=1):
        where = _where(folder, out)
        users = _users(folder, runs, varying, out)
        items = grids.grid_items(folder, max_items)
        if not items:
            parts.append(_note(f"The manifest in {where} ({users}) lists no finished image."))
            continue
        png, problems = grids.grid_png(items)
        tips = [
            f"{item.class_name} → {item.negative_class or 'no negative'} · seed {item.seed}: {item.prompt}"
            for item in items
        ]
        boxes = [(top, height, tip) for (top, height), tip in zip(grids.row_boxes(len(items)), tips)]
        parts.append(figures.add(
            f"grid_{number}.png", png, f"synthetic images ({users})",
            f"{users}: {len(items)} items, each row its class and negative class (hover a row for its seed and "
            "prompt).", rows=boxes,
        ))
        rows = [
            [_Number(str(row)), item.id, item.class_name, item.negative_class or "", item.mode or "",
             _Number(str(item.seed)) if item.seed is not None else "", item.prompt]
            for row, item in enumerate(items, start=1)
        ]
        table = _table(["row", "id", "class", "negative class", "mode", "seed", "prompt"], rows)
        parts.append(_details(f"the {len(rows)} items of this grid (the set in {where})", table))
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

    Raises DataError when `out` holds nothing to show (no results.json, no synthetic images, no
    class similarity).
    """
    out = Path(out).resolve()
    runs = collect_runs(out)
    folder = out / REPORT_DIR
    if not is_claimed(out):  # results gathered by hand: then the report folder itself must be synthshot's
        claim_folder(folder, "report folder")
    figures = _Figures(folder)
    entries = [entry for run in runs for entry in run.entries]
    split = _reported_split(entries)
    best, chosen_on = _best(entries, split)

    # 1. Numbers, then 2. plots over the sweep and of training, 3. the best entry in detail, 4. speed,
    # 5.-6. what generation used and made, 7. how to reproduce it.
    body: list[str] = []
    body += _failed_section(failed_runs(out))
    body += _pivot_section(runs, split)
    body += _accuracy_section(runs, best, chosen_on)
    if entries:
        body += _curves_section(runs, split, figures)
        body += _training_section(runs, figures)
        body += _best_section(best, chosen_on, figures)
    else:
        body += _training_section(runs, figures)
    body += _speed_section(runs, split, figures)
    body += _similarity_section(runs, out, figures, echo)
    body += _grids_section(runs, out, max_grid_items, figures)
    body += _config_section(runs, out)

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    kind = "sweep" if len(runs) > 1 else "run"
    title = f"synthshot report: {out.name}"
    sections = (("failed", "failed runs"), ("pivot", "results"), ("accuracy", "accuracy"), ("curves", "curves"),
                ("training", "fine-tuning"), ("best", "best run"), ("speed", "speed"), ("similarity", "similarity"),
                ("images", "images"), ("config", "config"))
    text = "\n".join(body)
    contents = " · ".join(
        f"<a href='#{anchor}'>{label}</a>" for anchor, label in sections if f"<h2 id='{anchor}'>" in text
    )
    results = f"{len(entries)} result(s)" if entries else "no results yet"
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"<p class='meta'>{escape(str(out))} · {kind} of {len(runs)} run(s), {results} · "
        f"written {escape(created)} by synthshot {escape(__version__)}</p><nav>{contents}</nav>"
        + text
        + "\n</body></html>\n"
    )
    path = folder / INDEX
    atomic_write_text(path, page)
    echo(f"report: {path} ({len(runs)} run(s), {len(figures.written)} figure(s))")
    return path
