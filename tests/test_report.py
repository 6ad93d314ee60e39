"""The HTML report: runs found in a sweep or a single run, every section drawn from real files
(results.json, similarity.safetensors, a generation manifest with real PNGs, config.resolved.yaml),
strings from files escaped, missing parts noted, and the page rendered in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.classify.metrics import classification_metrics
from synthshot.config import load_config, write_resolved_config
from synthshot.errors import DataError
from synthshot.generation.items import plan_items
from synthshot.generation.runner import finished_records, run_generation
from synthshot.generation.similarity import (
    SimilarityResult,
    class_similarity,
    negative_distribution,
)
from synthshot.report import write_report
from synthshot.report.collect import collect_runs
from synthshot.report.grids import (
    GAP,
    HEADER,
    PLACEHOLDER,
    ROW_LABEL,
    GridItem,
    grid_png,
    sample_records,
)
from synthshot.report.plots import confusion_heatmap, per_class_accuracy
from synthshot.results import make_results, write_results

# One class name full of HTML: the page must show it, never interpret it.
HOSTILE = '<img src=x onerror="alert(1)"> & co'
CLASSES = sorted(["cat", "dog", HOSTILE])
SHOTS = (1, 2)
IMAGES_PER_CLASS = (2, 3)
TEST_IMAGES = 12


def correct_count(shots: int, images_per_class: int) -> int:
    return 4 + 2 * shots + images_per_class  # best: shots 2, 3 images per class -> 11 of 12


def metrics(correct: int) -> dict:
    targets = [i % len(CLASSES) for i in range(TEST_IMAGES)]
    predictions = [t if i < correct else (t + 1) % len(CLASSES) for i, t in enumerate(targets)]
    return classification_metrics(targets, predictions, CLASSES)


def write_run(folder: Path, *, shots: int, images_per_class: int, name: str | None = None) -> None:
    config = load_config(None, [f"output_dir={folder}", f"data.shots={shots}",
                                f"generation.images_per_class={images_per_class}"])
    write_resolved_config(config, folder)
    run = {"name": name if name is not None else folder.name, "dataset": "toy", "shots": shots,
           "images_per_class": images_per_class, "backbone": "tiny-clip"}
    entries = [
        {"method": "prototypes", "split": "test", "params": {"weight": 0.5}, "selected_on": "val",
         "metrics": metrics(correct_count(shots, images_per_class))},
        {"method": "prototypes", "split": "val", "params": {"weight": 0.5},
         "metrics": metrics(TEST_IMAGES)},  # val is never what the report calls best
        {"method": "text", "split": "test", "metrics": metrics(5)},
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_results(folder, make_results("evaluate", entries, run=run, config=config.model_dump(mode="json")))


def write_fewshot_images(root: Path) -> dict[str, list[str]]:
    split = {}
    for number, name in enumerate(CLASSES):
        folder = root / f"class{number}"
        folder.mkdir(parents=True)
        files = []
        for index in range(2):
            path = folder / f"{index}.png"
            Image.new("RGB", (40, 30), (80 * number, 120, 60 * index)).save(path)
            files.append(str(path))
        split[name] = files
    return split


def render_from_seed(batch):
    """Draws each item's image from its seed: the stand-in for the diffusion pipeline."""
    return [Image.new("RGB", (32, 32), tuple(int(v) for v in np.random.default_rng(item.seed).integers(0, 255, 3)))
            for item in batch]


def write_generation(folder: Path, split: dict[str, list[str]], similarity: SimilarityResult) -> None:
    items = plan_items(split, images_per_class=3, base_seed=0, prompts={c: f"a photo of a {c}" for c in CLASSES},
                       mode="dual", negative_probs=similarity.as_dict())
    report = run_generation(items, render_from_seed, folder, batch_size=4, record_extra={"mode": "dual"},
                            progress=False)
    report.raise_for_failures()


def make_similarity() -> SimilarityResult:
    generator = torch.Generator().manual_seed(0)
    embeddings = [torch.randn(2, 8, generator=generator) for _ in CLASSES]
    similarity = class_similarity(embeddings)
    return SimilarityResult(CLASSES, similarity, negative_distribution(similarity, 0.4), model_id="tiny-clip")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep of 2 x 2 runs sharing one similarity and one synthetic set at the sweep root."""
    out = tmp_path_factory.mktemp("sweep") / "toy-sweep"
    similarity = make_similarity()
    similarity.save(out / "similarity")
    write_generation(out, write_fewshot_images(out / "data"), similarity)
    for shots in SHOTS:
        for images_per_class in IMAGES_PER_CLASS:
            write_run(out / f"shots{shots}-ipc{images_per_class}", shots=shots, images_per_class=images_per_class)
    return out


@pytest.fixture(scope="module")
def sweep_page(sweep) -> Path:
    return write_report(sweep, max_grid_items=5, echo=lambda *_: None)


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


# ------------------------------------------------------------------------------------ sweep
def test_sweep_report_has_every_section_and_figure(sweep, sweep_page):
    assert sweep_page == sweep / "report" / "index.html"
    page = sweep_page.read_text(encoding="utf-8")
    expected = {"accuracy_vs_shots.png", "accuracy_vs_images_per_class.png", "best_per_class.png",
                "best_confusion.png", "similarity_1.png", "grid_1.png"}
    assert {p.name for p in (sweep / "report").glob("*.png")} == expected
    # Each figure is embedded with the same bytes as its PNG and links to that file.
    linked = re.findall(r'<a href="([^"]+\.png)"><img', page)
    assert sorted(linked) == sorted(expected)
    assert sorted(embedded_images(page)) == sorted((sweep / "report" / name).read_bytes() for name in expected)
    for name in expected:
        with Image.open(sweep / "report" / name) as image:
            image.load()
            assert image.width > 50 and image.height > 50
    for anchor in ("accuracy", "curves", "best", "similarity", "images", "config"):
        assert f"id='{anchor}'" in page
    assert "class=\"note\"" not in page  # nothing is missing in this sweep
    assert "versions" in page and "torch" in page


def test_best_is_the_highest_test_top1_never_val(sweep_page):
    page = sweep_page.read_text(encoding="utf-8")
    best_rows = re.findall(r'<tr class="best">(.*?)</tr>', page)
    assert len(best_rows) == 1
    cells = re.findall(r"<td[^>]*>(.*?)</td>", best_rows[0])
    assert cells[0] == "shots2-ipc3" and cells[6] == "prototypes" and cells[7] == "test"
    assert cells[9] == f"{100 * 11 / 12:.2f}"
    assert "Run <b>shots2-ipc3</b>" in page
    # One row per run and entry: 4 runs x 3 entries.
    accuracy_table = page[page.index("id='accuracy'"):page.index("id='curves'")]
    assert len(re.findall(r"<tr[^>]*><td>shots\d-ipc\d</td>", accuracy_table)) == 12


def test_strings_from_files_are_escaped(sweep_page):
    page = sweep_page.read_text(encoding="utf-8")
    assert HOSTILE not in page and "onerror=\"alert" not in page
    escaped = html.escape(HOSTILE)
    assert escaped in page  # in the similarity table, the grid table, the per-class table
    assert page.count("<img ") == len(embedded_images(page))


def test_grid_rows_follow_the_manifest(sweep, sweep_page):
    page = sweep_page.read_text(encoding="utf-8")
    records = finished_records(sweep)
    chosen = sample_records(records, 5)
    # Spread over classes: every class appears before any class appears twice.
    assert {r["class_name"] for r in chosen[:3]} == set(CLASSES)
    for record in chosen:
        assert html.escape(record["id"]) in page
        assert html.escape(record["prompt"]) in page
    with Image.open(sweep / "report" / "grid_1.png") as grid:
        assert grid.height > 5 * 128  # header + 5 rows of tiles


def test_report_is_rewritten_whole(sweep, sweep_page):
    before = sweep_page.read_text(encoding="utf-8")
    again = write_report(sweep, max_grid_items=5, echo=lambda *_: None)
    assert again == sweep_page
    strip = re.compile(r"written \S+")
    assert strip.sub("", again.read_text(encoding="utf-8")) == strip.sub("", before)
    assert not list((sweep / "report").glob(".tmp-*"))


# ------------------------------------------------------------------------------ single run
def test_single_run_without_similarity_or_images_notes_the_missing_sections(tmp_path):
    write_run(tmp_path, shots=4, images_per_class=10, name="solo")
    messages = []
    page_path = write_report(tmp_path, echo=messages.append)
    page = page_path.read_text(encoding="utf-8")
    assert "No similarity/similarity.safetensors" in page
    assert "No manifest.jsonl" in page
    assert "Every run has shots = 4: no plot against shots." in page
    assert "Every run has images per class = 10" in page
    assert {p.name for p in page_path.parent.glob("*.png")} == {"best_per_class.png", "best_confusion.png"}
    assert "<td>solo</td>" in page
    assert "config of solo (config.resolved.yaml)" in page
    assert messages == [f"report: {page_path} (1 run(s), 2 figure(s))"]


def test_a_report_folder_of_someone_elses_is_never_written_over(tmp_path):
    """Results gathered by hand (no synthshot marker): their `report/` is written only when it is
    new, empty or synthshot's own."""
    write_run(tmp_path, shots=4, images_per_class=10, name="solo")
    theirs = tmp_path / "report" / "index.html"
    theirs.parent.mkdir()
    theirs.write_text("my own report")
    with pytest.raises(DataError, match=r"report folder .* already holds files synthshot did not write"):
        write_report(tmp_path, echo=lambda *_: None)
    assert theirs.read_text() == "my own report" and [p.name for p in theirs.parent.iterdir()] == ["index.html"]
    theirs.unlink()
    write_report(tmp_path, echo=lambda *_: None)
    write_report(tmp_path, echo=lambda *_: None)  # its own folder now: rewritten
    assert "synthshot report" in theirs.read_text()


def test_controls_are_runs_of_their_own_beside_the_method(tmp_path):
    write_run(tmp_path, shots=4, images_per_class=10, name="dipsy")
    write_run(tmp_path / "controls" / "real-only", shots=4, images_per_class=1, name="real-only")
    runs = collect_runs(tmp_path)
    assert [run.name for run in runs] == ["dipsy", "controls/real-only"]
    method, control = runs
    assert {entry.source.parent for entry in method.entries} == {tmp_path.resolve()}
    assert control.info["control"] == "real-only" and "control" not in method.info
    page = write_report(tmp_path, echo=lambda *_: None).read_text(encoding="utf-8")
    assert "<td>controls/real-only</td>" in page


def test_results_below_a_run_merge_into_it_and_equal_names_are_told_apart(tmp_path):
    write_run(tmp_path / "a", shots=1, images_per_class=2, name="same")
    write_run(tmp_path / "b", shots=2, images_per_class=2, name="same")
    finetune = make_results("finetune", [{"method": "finetune", "split": "test", "metrics": metrics(9)}])
    write_results(tmp_path / "a" / "finetune", finetune)
    runs = collect_runs(tmp_path)
    assert [run.name for run in runs] == ["same (a)", "same (b)"]
    assert [(e.stage, e.method) for e in runs[0].entries] == [
        ("evaluate", "prototypes"), ("evaluate", "prototypes"), ("evaluate", "text"), ("finetune", "finetune")]
    assert runs[0].info["shots"] == 1 and runs[0].config_file == tmp_path / "a" / "config.resolved.yaml"


def test_damaged_optional_parts_are_noted_not_fatal(tmp_path):
    bare = {"method": "zero-shot", "split": "test", "metrics": {"top1": 0.5, "per_class": {"a": None}, "confusion": [[1]],
                                                                 "classes": ["a", "b"]}}
    write_results(tmp_path, make_results("evaluate", [bare]))
    (tmp_path / "similarity").mkdir()
    (tmp_path / "similarity" / "similarity.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "manifest.jsonl").write_text('{"id": "a-0", "file": "synthetic/a/gone.png"}\n')
    messages = []
    page = write_report(tmp_path, max_grid_items=4, echo=messages.append).read_text(encoding="utf-8")
    assert "could not be read" in page and "is not a readable safetensors file" in page
    assert "lists no finished image" in page
    assert "records no confusion matrix" in page
    assert "The results do not record shots: no plot against shots." in page
    assert messages[0].startswith("warning: similarity in similarity left out:")
    (tmp_path / "results.json").write_text("{broken")
    with pytest.raises(DataError, match="is not valid JSON"):
        write_report(tmp_path)


def test_a_folder_without_results_is_a_clear_error(tmp_path):
    (tmp_path / "similarity").mkdir()
    make_similarity().save(tmp_path / "similarity")
    with pytest.raises(DataError, match=r"holds no results\.json.*evaluate and finetune stages"):
        write_report(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        write_report(tmp_path / "nowhere")
    assert not (tmp_path / "report").exists()


def test_cli_report(tmp_path):
    write_run(tmp_path / "run", shots=1, images_per_class=2)
    command = [sys.executable, "-m", "synthshot.cli", "report"]
    done = subprocess.run([*command, tmp_path / "run"], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "report/index.html" in done.stdout and (tmp_path / "run" / "report" / "index.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run([*command, empty], check=False, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"error: {empty.resolve()} holds no results.json") and "Traceback" not in failed.stderr


# ------------------------------------------------------------------------------ parts
def test_grid_marks_text_mode_and_missing_images(tmp_path):
    result = tmp_path / "synthetic" / "a.png"
    result.parent.mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(result)
    record = {"id": "a-00000", "class_name": "a", "index": 0, "seed": 1, "prompt": "p", "positive_file": None,
              "negative_class": "b", "negative_file": str(tmp_path / "gone.png"), "file": "synthetic/a.png"}
    item = GridItem.from_record(record, tmp_path)
    png, problems = grid_png([item], tile=64)
    assert problems == [f"row 1 (a-00000), negative: {str(tmp_path / 'gone.png')!r} is missing"]
    with Image.open(io.BytesIO(png)) as grid:
        grid = grid.convert("RGB")
    # The result tile holds the red image; the positive tile is the grey placeholder.
    assert grid.getpixel((ROW_LABEL + 2 * (64 + GAP) + 32, HEADER + 32)) == (255, 0, 0)
    assert grid.getpixel((ROW_LABEL + 2, HEADER + 2)) == PLACEHOLDER


def test_accuracy_curves_draw_error_bars_for_the_spread_over_seeds():
    from synthshot.report.plots import accuracy_curves

    plain = accuracy_curves({"a": [(1, 0.5), (2, 0.6)]}, xlabel="shots")
    bars = accuracy_curves({"a": [(1, 0.5, 0.05), (2, 0.6, 0.02)]}, xlabel="shots")
    assert plain.startswith(b"\x89PNG") and bars.startswith(b"\x89PNG") and plain != bars
    assert accuracy_curves({"a": [(1, 0.5, None), (2, 0.6, None)]}, xlabel="shots") == plain


def test_plots_take_many_classes_and_names_with_dollars():
    names = [f"class ${i}" for i in range(70)]
    accuracies = {name: (i % 10) / 10 for i, name in enumerate(names)}
    accuracies["class $0"] = None  # no test image
    for png in (per_class_accuracy(accuracies), confusion_heatmap(names, np.eye(70, dtype=int).tolist())):
        assert png.startswith(b"\x89PNG")


# ------------------------------------------------------------------------------ Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Appended to a copy of the page: after load, records how many images there are and which did not decode.
PROBE = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src').slice(0, 40));
  const out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = JSON.stringify({total: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def images_in_chromium(page: Path, profile: Path) -> dict:
    """Load `page` in headless Chromium and return {total, broken} as the page itself saw them."""
    probe = page.with_name(f"probe-{page.name}")  # same folder, so relative links resolve alike
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    for _attempt in range(3):  # a loaded machine can end Chromium's virtual time before the load event
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=90)
        found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout, re.DOTALL)
        if found:
            break
    assert found, f"chromium exited {done.returncode} without the check: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs the Debian package `chromium`)")
def test_report_renders_in_headless_chromium_with_no_missing_image(sweep_page, tmp_path):
    seen = images_in_chromium(sweep_page, tmp_path / "profile")
    assert seen == {"total": 6, "broken": []}
    # The check can fail: a control page with one good and one missing image.
    good = base64.b64encode((sweep_page.parent / "grid_1.png").read_bytes()).decode()
    control = tmp_path / "control.html"
    control.write_text(f'<!DOCTYPE html><html><body><img src="data:image/png;base64,{good}">'
                       '<img src="missing.png"></body></html>')
    assert images_in_chromium(control, tmp_path / "profile") == {"total": 2, "broken": ["missing.png"]}
