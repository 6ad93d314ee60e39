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
         "metrics": metrics(correct_count(shots, images_per_class))},  # chooses the best; never highlighted
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


def test_best_is_chosen_on_validation_and_reported_on_test(sweep_page):
    page = sweep_page.read_text(encoding="utf-8")
    assert "chosen on the val split" in page
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


def test_a_folder_without_anything_to_show_is_a_clear_error(tmp_path):
    (tmp_path / "splits").mkdir()
    with pytest.raises(DataError, match=r"holds no results\.json, no synthetic images and no class similarity"):
        write_report(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        write_report(tmp_path / "nowhere")
    assert not (tmp_path / "report").exists()


def test_a_folder_with_only_a_similarity_shows_it(tmp_path):
    make_similarity().save(tmp_path / "similarity")
    page = write_report(tmp_path, echo=lambda *_: None).read_text(encoding="utf-8")
    assert "similarity_1.png" in page and "No results yet" in page


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
  const shown = i => { const box = i.getBoundingClientRect();
                       return box.width > 0 && box.height > 0 && (!i.checkVisibility || i.checkVisibility()); };
  const flat = images.filter(i => !shown(i))
                     .map(i => i.getAttribute('alt') || i.getAttribute('src').slice(0, 40));
  const out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = JSON.stringify({total: images.length, broken: broken, flat: flat});
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
    assert seen == {"total": 6, "broken": [], "flat": []}
    # The check can fail: a control page with one good and one missing image.
    good = base64.b64encode((sweep_page.parent / "grid_1.png").read_bytes()).decode()
    control = tmp_path / "control.html"
    control.write_text(f'<!DOCTYPE html><html><body><img src="data:image/png;base64,{good}">'
                       '<img src="missing.png"></body></html>')
    seen = images_in_chromium(control, tmp_path / "profile")
    assert seen["total"] == 2 and seen["broken"] == ["missing.png"]
    # ... and an image that decodes but is drawn at no size (a closed <details>, display: none).
    hidden = tmp_path / "hidden.html"
    hidden.write_text(f'<!DOCTYPE html><html><body><details><summary>s</summary><img alt="inside" '
                      f'src="data:image/png;base64,{good}"></details><div style="display: none"><img alt="none" '
                      f'src="data:image/png;base64,{good}"></div></body></html>')
    assert images_in_chromium(hidden, tmp_path / "profile") == {"total": 2, "broken": [], "flat": ["inside", "none"]}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs the Debian package `chromium`)")
def test_seeded_sweep_report_renders_every_image_at_a_size(seeded_page, tmp_path):
    seen = images_in_chromium(seeded_page, tmp_path / "profile")
    assert seen["broken"] == [] and seen["flat"] == [] and seen["total"] >= 10, seen


# ------------------------------------------------------------------ a sweep with seeds, as papers report it
SEEDED_SHOTS = (1, 2, 4)
SEEDED_IPC = (2, 4)
SEEDS = (0, 1)
EPOCHS = 3


def seeded_correct(method: str, shots: int, ipc: int, seed: int) -> int:
    """Correct test (and validation) images of 12: finetune beats prototypes, more shots and
    images help, seed 1 is one better than seed 0; the text classifier ignores all that."""
    if method == "finetune":
        return 5 + shots + ipc // 2 + seed
    if method == "prototypes":
        return 3 + shots // 2 + ipc // 2 + seed
    return 5


def seeded_cell(method: str, shots: int, ipc: int) -> str:
    """The pivot table's text for a cell: mean ± sample std over the two seeds, in percent."""
    values = np.array([100 * seeded_correct(method, shots, ipc, seed) / TEST_IMAGES for seed in SEEDS])
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def seconds_per_image(shots: int) -> float:
    return {1: 0.5, 2: 0.75, 4: 1.25}[shots]


def write_seeded_run(out: Path, shots: int, ipc: int, set_folder: Path) -> None:
    from synthshot.results import aggregate_seeds

    run = out / f"shots={shots},images_per_class={ipc}"
    per_stage: dict[str, dict[int, dict]] = {"evaluate": {}, "finetune": {}}
    for seed in SEEDS:
        folder = run / f"seed={seed}"
        config = load_config(None, [f"output_dir={folder}", f"data.shots={shots}", f"seed={seed}",
                                    f"generation.images_per_class={ipc}", f"synthetic_dir={set_folder}"])
        write_resolved_config(config, folder)
        info = {"name": folder.name, "dataset": "toy", "shots": shots, "images_per_class": ipc,
                "backbone": "tiny-clip"}
        dumped = config.model_dump(mode="json")
        evaluate = [
            {"method": method, "split": split, "metrics": metrics(seeded_correct(method, shots, ipc, seed)),
             "selected_on": "val" if split == "test" else None}
            for method in ("prototypes", "text") for split in ("test", "val")
        ]
        finetune = [
            {"method": "finetune", "split": split, "params": {"selected_epoch": 2, "epochs": EPOCHS},
             "selected_on": "val", "metrics": metrics(seeded_correct("finetune", shots, ipc, seed))}
            for split in ("test", "val")
        ]
        per_stage["evaluate"][seed] = make_results("evaluate", evaluate, run=info, config=dumped)
        per_stage["finetune"][seed] = make_results("finetune", finetune, run=info, config=dumped)
        write_results(folder / "evaluate", per_stage["evaluate"][seed])
        write_results(folder / "finetune", per_stage["finetune"][seed])
        lines = []
        for epoch in range(1, EPOCHS + 1):
            lines.append({"kind": "step", "epoch": epoch, "step": 4 * epoch, "loss": 2.0 / epoch, "lr": 1e-4,
                          "images_per_s": 100.0})
            lines.append({"kind": "epoch", "epoch": epoch, "loss": 2.1 / epoch, "images_per_s": 100.0 + seed,
                          "seconds": 1.5, "val_top1": [0.5, 0.75, 0.7][epoch - 1] + seed / 100})
        (folder / "finetune" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        stages = {name: {"fingerprint": "x", "seconds": seconds, "finished": "2026-01-01T00:00:00+0000"}
                  for name, seconds in (("data", 0.5), ("similarity", 2.0), ("generate", 30.0 * shots),
                                        ("finetune", 4.5), ("evaluate", 1.0))}
        (folder / ".synthshot").mkdir(exist_ok=True)
        (folder / ".synthshot" / "stages.json").write_text(json.dumps(stages))
    for stage, results in per_stage.items():
        write_results(run / stage, aggregate_seeds(results))


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory) -> Path:
    """3 shots x 2 images per class x 2 seeds; one synthetic set per shots value under shared/,
    each used by the two runs of its shots."""
    from synthshot.report.collect import GENERATION_TIMINGS

    out = tmp_path_factory.mktemp("seeded") / "toy-seeded"
    similarity = make_similarity()
    similarity.save(out / "similarity")
    split = write_fewshot_images(out / "data")
    for shots in SEEDED_SHOTS:
        set_folder = out / "shared" / f"synthetic-{shots:012d}"
        write_generation(set_folder, split, similarity)
        timings = {"images": 9, "seconds": 9 * seconds_per_image(shots), "load_seconds": 3.0, "classes": 3,
                   "processes": 1}
        (set_folder / GENERATION_TIMINGS).parent.mkdir(parents=True, exist_ok=True)
        (set_folder / GENERATION_TIMINGS).write_text(json.dumps(timings))
        for ipc in SEEDED_IPC:
            write_seeded_run(out, shots, ipc, set_folder)
    return out


@pytest.fixture(scope="module")
def seeded_page(seeded_sweep) -> Path:
    return write_report(seeded_sweep, max_grid_items=4, echo=lambda *_: None)


def section(page: str, anchor: str) -> str:
    start = page.index(f"id='{anchor}'")
    following = page.find("<h2", start)
    return page[start:following if following != -1 else len(page)]


def table_rows(html_text: str) -> list[list[str]]:
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html_text)]


def test_pivot_table_has_methods_by_shots_with_mean_and_std_over_seeds(seeded_page):
    page = seeded_page.read_text(encoding="utf-8")
    pivot = section(page, "pivot")
    assert "toy" in pivot and "mean ± std over 2 seeds" in pivot
    rows = table_rows(pivot)
    assert rows[0] == ["method", "images per class", "1 shot", "2 shots", "4 shots"]
    body = {(re.sub("<[^>]+>", "", row[0]), row[1]): row[2:] for row in rows[1:]}
    assert set(body) == {(method, str(ipc)) for method in ("finetune", "prototypes", "text") for ipc in SEEDED_IPC}
    for (method, ipc), cells in body.items():
        plain = [re.sub("<[^>]+>", "", cell) for cell in cells]
        assert plain == [seeded_cell(method, shots, int(ipc)) for shots in SEEDED_SHOTS], (method, ipc, cells)
    # The best of each column in bold: fine-tuning with 4 images per class.
    for column in range(len(SEEDED_SHOTS)):
        bold = [key for key, cells in body.items() if "<b>" in cells[column]]
        assert bold == [("finetune", "4")], (column, bold)


def test_sweep_curves_have_a_panel_per_method_and_the_training_curves(seeded_sweep, seeded_page):
    page = seeded_page.read_text(encoding="utf-8")
    written = {p.name for p in (seeded_sweep / "report").glob("*.png")}
    assert {"accuracy_vs_shots.png", "accuracy_vs_images_per_class.png", "finetune_curves.png",
            "accuracy_vs_generation_time.png", "grid_1.png", "grid_2.png", "grid_3.png"} <= written
    training = section(page, "training")
    assert "finetune_curves.png" in training and "chosen epoch" in training
    with Image.open(seeded_sweep / "report" / "accuracy_vs_shots.png") as image:
        assert image.width > image.height  # three panels side by side, the legend beside them


def test_best_run_is_chosen_on_validation(seeded_page):
    page = seeded_page.read_text(encoding="utf-8")
    best = section(page, "best")
    assert "Run <b>shots=4,images_per_class=4</b>" in best and "finetune" in best
    assert "chosen on the val split" in best


def test_sweep_grids_are_captioned_by_their_runs_and_rows_are_labelled(seeded_sweep, seeded_page):
    page = seeded_page.read_text(encoding="utf-8")
    images = section(page, "images")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", images)
    assert len(captions) == 3
    for shots, caption in zip(SEEDED_SHOTS, captions):
        assert caption.startswith(f"shots={shots} · images per class=2, 4"), caption
        assert "synthetic-" not in caption
    # Each row: class and negative class in the image, seed and prompt in a tooltip.
    records = finished_records(seeded_sweep / "shared" / f"synthetic-{1:012d}")
    first = sample_records(records, 4)[0]
    tooltip = html.escape(f"seed {first['seed']}: {first['prompt']}", quote=True)
    label = f'{html.escape(first["class_name"])} → {html.escape(first["negative_class"])}'
    assert f'title="{label} · {tooltip}"' in images


def test_grid_rows_are_labelled_with_class_and_negative(tmp_path):
    from synthshot.report.grids import row_label

    result = tmp_path / "synthetic" / "a.png"
    result.parent.mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(result)
    record = {"id": "a-00000", "class_name": "airplane", "index": 0, "seed": 1, "prompt": "p",
              "negative_class": "helicopter", "file": "synthetic/a.png"}
    item = GridItem.from_record(record, tmp_path)
    assert row_label(item, 1) == "1. airplane\nneg: helicopter"
    with Image.open(io.BytesIO(grid_png([item], tile=64)[0])) as grid:
        label = np.asarray(grid.convert("L"))[HEADER:HEADER + 64, :ROW_LABEL]
    assert (label < 128).sum() > 150  # words, not just a row number


def test_speed_panel_has_stage_times_generation_and_training_rates(seeded_page):
    page = seeded_page.read_text(encoding="utf-8")
    speed = section(page, "speed")
    rows = table_rows(speed)
    header = rows[0]
    for title in ("data (s)", "generate (s)", "finetune (s)", "generation s / image", "generation s / class",
                  "fine-tuning images / s"):
        assert title in header, header
    by_run = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    run = by_run["shots=2,images_per_class=4"]
    assert run["generate (s)"] == "60.0" and run["generation s / image"] == "0.75"
    assert run["generation s / class"] == "3.00" and run["fine-tuning images / s"] == "100.5"
    assert "accuracy_vs_generation_time.png" in speed


# ------------------------------------------------------------------------------ plots
def test_accuracy_panels_keep_the_legend_off_the_lines_and_tell_series_apart():
    from synthshot.report.plots import accuracy_figure

    series = {f"setting {i}": [(1, 0.5 + i / 100), (2, 0.6), (4, 0.7 - i / 100)] for i in range(12)}
    panels = {"finetune": series, "prototypes": {k: [(x, y / 2) for x, y in v] for k, v in series.items()}}
    figure = accuracy_figure(panels, xlabel="shots")
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    axes = [a for a in figure.axes if a.lines]
    assert len(axes) == 2
    legends = figure.legends or [a.get_legend() for a in figure.axes if a.get_legend()]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    for a in axes:
        assert not box.overlaps(a.get_window_extent(renderer))
    styles = [(line.get_color(), line.get_marker()) for line in axes[0].lines if line.get_label() in series]
    assert len(styles) == 12 and len(set(styles)) == 12
    # Equal lines do not hide each other: each series is drawn a little apart.
    xs = {line.get_label(): tuple(line.get_xdata()) for line in axes[0].lines if line.get_label() in series}
    assert len(set(xs.values())) == 12


def test_similarity_heatmap_reads_a_narrow_range_and_dark_cells():
    from matplotlib.colors import to_rgb

    from synthshot.report.plots import similarity_figure

    names = ["a", "b", "c", "d"]
    similarity = np.array([[1.0, 0.995, 0.992, 0.990], [0.995, 1.0, 0.993, 0.991],
                           [0.992, 0.993, 1.0, 0.994], [0.990, 0.991, 0.994, 1.0]])
    figure = similarity_figure(names, similarity)
    texts = {t.get_text(): t for t in figure.axes[0].texts}
    assert {"0.995", "0.992", "0.990", "0.991", "0.993", "0.994", "1.000"} <= set(texts), sorted(texts)
    assert to_rgb(texts["0.990"].get_color()) == (1.0, 1.0, 1.0)  # the darkest viridis cell
    assert to_rgb(texts["1.000"].get_color()) == (0.0, 0.0, 0.0)  # the brightest


def test_similarity_heatmap_of_many_classes_is_clustered_without_cell_text():
    from synthshot.report.plots import cluster_order, similarity_figure

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 10)  # 40 classes in 4 groups
    similarity = np.where(groups[:, None] == groups[None, :], 0.9, 0.2) + rng.uniform(0, 0.05, (40, 40))
    similarity = (similarity + similarity.T) / 2
    np.fill_diagonal(similarity, 1.0)
    shuffle = rng.permutation(40)
    similarity, groups = similarity[np.ix_(shuffle, shuffle)], groups[shuffle]
    order = cluster_order(similarity)
    assert sorted(order) == list(range(40))
    ordered = groups[order]
    assert int((ordered[1:] != ordered[:-1]).sum()) == 3  # each group in one block
    figure = similarity_figure([f"class {i}" for i in range(40)], similarity)
    assert len(figure.axes[0].texts) == 0
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == [f"class {i}" for i in order]


# ------------------------------------------------------------------------------ before any result
def test_report_right_after_generate_shows_the_images_and_the_similarity(tmp_path, tiny_kit):
    out = tmp_path / "sweep"
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
output_dir: {out}
offline: true
stages: [data, similarity, generate]
models: {{tiny_kit: {tiny_kit}}}
data: {{demo: {{classes: 3, images_per_class: 3, size: 32}}, shots: 1}}
generation: {{images_per_class: 1, steps: 2, height: 32, width: 32, batch_size: 3, precision: fp32}}
sweep: {{data.shots: [1, 2]}}
""")
    command = [sys.executable, "-m", "synthshot.cli"]
    ran = subprocess.run([*command, "run", config], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    done = subprocess.run([*command, "report", out], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "No results yet" in page
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section(page, "images"))
    assert [c.split(":")[0] for c in captions] == ["shots=1", "shots=2"], captions
    assert "similarity_1.png" in section(page, "similarity")


def test_report_after_synthshot_generate_alone_finds_the_set_in_the_run(tmp_path):
    """`synthshot generate CONFIG` writes no config at the run's root: the set is found in it."""
    similarity = make_similarity()
    similarity.save(tmp_path / "similarity")
    write_generation(tmp_path / "synthetic-0123456789ab", write_fewshot_images(tmp_path / "data"), similarity)
    (tmp_path / ".synthshot").mkdir()
    (tmp_path / ".synthshot" / "stages.json").write_text(json.dumps({"generate": {"fingerprint": "x", "seconds": 3.0}}))
    page = write_report(tmp_path, max_grid_items=3, echo=lambda *_: None).read_text(encoding="utf-8")
    assert "grid_1.png" in section(page, "images") and "similarity_1.png" in section(page, "similarity")
    assert "<td class=\"num\">3.0</td>" in section(page, "speed")
