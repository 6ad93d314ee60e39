"""Inputs a careless or hostile user gives: each is a one-line error naming what is wrong (or is
skipped when asked), never a traceback; and synthshot never writes over a folder it did not make."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from synthshot.config import load_config
from synthshot.errors import DataError, ModelError
from synthshot.experiment import Experiment
import synthshot.io as sio
from synthshot.io import slugify, unique_slugs

CLI = [sys.executable, "-m", "synthshot.cli"]


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_folder(root: Path, bomb_in: str = "cat") -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(root / name / f"{i}.png")
    (root / bomb_in / "huge.png").write_bytes(png_claiming(20000, 20000))
    return root


# ------------------------------------------------------------------------ decompression bombs
def test_a_decompression_bomb_in_a_class_folder(tmp_path):
    from synthshot.data.folders import check_images, scan_image_folder

    images = scan_image_folder(image_folder(tmp_path / "data"))
    with pytest.raises(DataError, match=r"huge.png' is too large to decode safely.*skip_corrupt"):
        check_images(images, skip_corrupt=False)
    kept = check_images(images, skip_corrupt=True)
    assert [p.name for p in kept["cat"]] == ["0.png", "1.png", "2.png"]


def test_a_decompression_bomb_through_the_cli_with_skip_corrupt(tmp_path):
    root = image_folder(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\ndata: {{root: {root}, shots: 2, skip_corrupt: true}}\n")
    result = subprocess.run([*CLI, "data", "split", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "huge.png" in result.stderr


def test_a_decompression_bomb_as_a_test_image_in_features(tmp_path, tiny_kit, hub_options):
    from synthshot.features.backends import load_image_encoder
    from synthshot.features.extract import extract_features

    root = image_folder(tmp_path / "data")
    encoder = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    files = sorted((root / "cat").iterdir())
    with pytest.raises(DataError, match="too large to decode safely"):
        extract_features(encoder, files, multiscale=False, progress=False, workers=0)


def test_a_decompression_bomb_in_a_report_grid_is_a_placeholder(tmp_path):
    from synthshot.report.grids import GridItem, grid_png

    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_claiming(20000, 20000))
    item = GridItem(id="cat-00000", class_name="cat", negative_class=None, prompt="a cat", seed=1, mode="text",
                    positive=None, negative=None, result=bomb)
    png, problems = grid_png([item])
    assert png.startswith(b"\x89PNG") and problems == [f"row 1 (cat-00000), result: {str(bomb)!r} is too large to decode safely"]


# ------------------------------------------------------------------------ damaged files of ours
def test_a_deeply_nested_features_sidecar_is_reported_and_recomputed(tmp_path, tiny_kit, hub_options, caplog):
    from synthshot.features.backends import load_image_encoder
    from synthshot.features.cache import read_cache, sidecar_path
    from synthshot.features.extract import extract_features

    root = image_folder(tmp_path / "data", bomb_in="dog")
    files = sorted((root / "cat").iterdir())
    encoder = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    cache = tmp_path / "features" / "test.safetensors"
    first = extract_features(encoder, files, multiscale=False, cache=cache, progress=False, workers=0)
    sidecar_path(cache).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"sidecar .*test.json is corrupt \(nested too deeply"):
        read_cache(cache)
    again = extract_features(encoder, files, multiscale=False, cache=cache, progress=False, workers=0)
    assert torch.equal(first.features, again.features) and "recomputing all features" in caplog.text


def similarity_file(tmp_path, *, classes, similarity, metadata_extra=None):
    from safetensors.torch import save_file

    folder = tmp_path / "similarity"
    folder.mkdir(parents=True, exist_ok=True)
    n = similarity.shape[0]
    metadata = {"classes": classes, "method": "class_mean", "temperature": "0.4", "sampling": "similarity",
                **(metadata_extra or {})}
    save_file({"similarity": similarity, "negative_probs": torch.full((n, n), 1.0 / n)}, str(folder / "similarity.safetensors"),
              metadata=metadata)
    return folder


@pytest.mark.parametrize("classes, similarity, extra, why", [
    ('["a", "b"]', torch.eye(3), None, "similarity has shape"),
    ("not json", torch.eye(2), None, "Expecting value"),
    ('{"a": 1}', torch.eye(2), None, "not a list of names"),
    ('["a", "b"]', torch.eye(2), {"temperature": "warm"}, "could not convert"),
    ("[" * 50_000 + "]" * 50_000, torch.eye(2), None, "nested too deeply"),
])
def test_a_bad_similarity_file_names_the_file(tmp_path, classes, similarity, extra, why):
    from synthshot.generation.similarity import SimilarityResult

    folder = similarity_file(tmp_path, classes=classes, similarity=similarity, metadata_extra=extra)
    with pytest.raises(DataError, match=r"similarity.safetensors is not a valid similarity file") as info:
        SimilarityResult.load(folder)
    assert why in str(info.value)


def test_the_similarity_stage_repairs_its_own_damaged_file(tmp_path, tiny_kit):
    from synthshot.generation.similarity import SimilarityResult
    from synthshot.runs import run_stage

    config = load_config(None, [f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={tiny_kit}", "offline=true",
                                "data.demo.classes=3", "data.demo.images_per_class=3", "data.demo.size=32",
                                "data.shots=2"])
    exp = Experiment(config)
    run_stage(exp, "similarity", echo=lambda *_: None)
    good = SimilarityResult.load(exp.layout.similarity)
    similarity_file(exp.layout.out, classes='["x"]', similarity=torch.eye(2))
    said = []
    result = run_stage(Experiment(config), "similarity", echo=said.append)
    assert "computed again" in said[0] and result.classes == good.classes
    assert torch.equal(SimilarityResult.load(exp.layout.similarity).similarity, good.similarity)


# ------------------------------------------------------------------------ long class names
def test_long_class_names_get_short_unique_slugs():
    base = "a very long class name " * 20
    names = [base + "one", base + "two", "x" * 300, "short"]
    slugs = unique_slugs(names)
    assert all(len(slug) <= sio.SLUG_MAX for slug in slugs.values())
    assert len(set(slugs.values())) == 4 and slugs["short"] == "short"
    assert slugify(base + "one") == slugify(base + "one")  # stable
    assert len(slugify("y" * sio.SLUG_MAX)) == sio.SLUG_MAX and slugify("y" * sio.SLUG_MAX) == "y" * sio.SLUG_MAX


def test_a_class_name_of_330_characters_generates(tmp_path):
    from synthshot.generation.items import plan_items
    from synthshot.generation.runner import run_generation

    name = "long class " * 30
    split = {name: ["a.png"], "dog": ["b.png"]}
    items = plan_items(split, images_per_class=1, base_seed=0, prompts={k: "p" for k in split}, mode="text",
                       negative_probs=None)
    report = run_generation(items, lambda batch: [Image.new("RGB", (8, 8)) for _ in batch], tmp_path / "set",
                            batch_size=2, progress=False)
    assert len(report.done) == 2


# ------------------------------------------------------------------------ folders of others
def test_an_output_folder_with_someone_elses_files_is_refused(tmp_path, tiny_kit):
    from synthshot.runs import run_stage

    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("my thesis")
    config = load_config(None, [f"output_dir={out}", f"models.tiny_kit={tiny_kit}", "offline=true",
                                "data.demo.classes=2", "data.demo.images_per_class=3", "data.demo.size=32"])
    with pytest.raises(DataError, match=r"output folder .*thesis' already holds files synthshot did not write "
                                         r"\(e.g. 'chapter1.tex'\).*new or empty folder"):
        run_stage(Experiment(config), "data", echo=lambda *_: None)
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex"]


def test_a_synthetic_dir_with_someone_elses_images_is_refused(tmp_path, tiny_kit):
    from synthshot.runs import run_stage

    mine = tmp_path / "my-images"
    (mine / "synthetic" / "circle").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(mine / "synthetic" / "circle" / "circle-00000.png")
    (mine / "config.resolved.yaml").write_text("mine")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    config = load_config(None, [f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={tiny_kit}", "offline=true",
                                "data.demo.classes=2", "data.demo.images_per_class=3", "data.demo.size=32",
                                f"synthetic_dir={mine}", "data.shots=2", "generation.mode=text", "generation.steps=1",
                                "generation.height=32", "generation.width=32", "generation.images_per_class=1"])
    with pytest.raises(DataError, match="synthetic set folder"):
        run_stage(Experiment(config), "generate", echo=lambda *_: None)
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before


def test_claim_folder(tmp_path):
    fresh = sio.claim_folder(tmp_path / "new" / "run", "output folder")
    assert (fresh / ".synthshot").is_dir()
    sio.claim_folder(fresh, "output folder")  # ours: accepted again
    (fresh / "notes.txt").write_text("added later by the user")
    sio.claim_folder(fresh, "output folder")
    legacy = tmp_path / "old-set"
    legacy.mkdir()
    (legacy / "manifest.jsonl").write_text("")
    sio.claim_folder(legacy, "set", legacy=("manifest.jsonl",))
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        sio.claim_folder(afile, "output folder")


def test_make_tiny_kit_refuses_a_folder_of_other_files_and_rebuilds_its_own(tmp_path):
    from synthshot.models.tiny import KIT_MANIFEST, make_tiny_kit

    theirs = tmp_path / "photos"
    theirs.mkdir()
    (theirs / "a.jpg").write_bytes(b"a")
    with pytest.raises(ModelError, match="is not a tiny model kit"):
        make_tiny_kit(theirs, overwrite=True)
    assert [p.name for p in theirs.iterdir()] == ["a.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    kit = make_tiny_kit(empty)
    first = json.loads((kit / KIT_MANIFEST).read_text())
    make_tiny_kit(kit, seed=1, overwrite=True)
    assert json.loads((kit / KIT_MANIFEST).read_text())["seed"] == 1 != first["seed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "photos"], "no staging folder left"


# ------------------------------------------------------------------------ models given as paths
@pytest.mark.parametrize("name", ["/no/such/clip", "./models/clip", "~/models/clip", "models/clip/v1"])
def test_a_missing_local_model_folder_is_not_looked_up_on_the_hub(name, hub_options):
    from synthshot.models.clip import load_clip

    with pytest.raises(ModelError, match=r"CLIP model folder .* does not exist: check the path") as info:
        load_clip(name, hub_options)
    assert "huggingface-cli" not in str(info.value) and "hub (" not in str(info.value)

