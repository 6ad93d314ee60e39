"""Class similarity and the negative-class distribution (DIPSY Sec. 3.3), math and CLIP path."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.errors import ConfigError, DataError
from synthshot.generation.similarity import (
    NEGATIVES_FILE,
    SIMILARITY_FILE,
    SimilarityResult,
    class_similarity,
    compute_class_similarity,
    embed_images,
    negative_distribution,
    uniform_distribution,
)


def random_classes(sizes=(3, 1, 4, 2), dim=8, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=generator) for n in sizes]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------ similarity formulas


def test_class_mean_is_the_cosine_of_the_raw_class_means():
    """The official code averages a class's raw image embeddings, then takes cosines of the means."""
    classes = [e * torch.linspace(0.2, 5.0, e.shape[0]).unsqueeze(1) for e in random_classes()]  # unequal norms
    means = [unit(e.double().numpy().mean(axis=0)) for e in classes]
    expected = np.array([[means[a] @ means[b] for b in range(4)] for a in range(4)])
    got = class_similarity(classes, method="class_mean")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_normalized_mean_is_the_cosine_of_the_means_of_unit_embeddings():
    classes = [e * torch.linspace(0.2, 5.0, e.shape[0]).unsqueeze(1) for e in random_classes()]
    means = [unit(unit(e.double().numpy()).mean(axis=0)) for e in classes]
    expected = np.array([[means[a] @ means[b] for b in range(4)] for a in range(4)])
    np.testing.assert_allclose(class_similarity(classes, method="normalized_mean").numpy(), expected, atol=1e-6)
    assert not torch.allclose(class_similarity(classes, "normalized_mean"), class_similarity(classes, "class_mean"))


def test_class_mean_is_the_default():
    classes = random_classes()
    assert torch.equal(class_similarity(classes), class_similarity(classes, method="class_mean"))


def test_pairwise_mean_is_the_mean_cosine_over_all_pairs():
    classes = random_classes()
    expected = np.zeros((4, 4))
    for a, xa in enumerate(classes):
        for b, xb in enumerate(classes):
            cosines = [
                float(xi.double() @ xj.double() / (xi.double().norm() * xj.double().norm()))
                for xi in xa
                for xj in xb  # for a == b this includes the i == j pairs
            ]
            expected[a, b] = sum(cosines) / len(cosines)
    got = class_similarity(classes, method="pairwise_mean")
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_methods_differ_on_spread_classes():
    classes = random_classes()
    assert not torch.allclose(
        class_similarity(classes, "class_mean"), class_similarity(classes, "pairwise_mean")
    )


@pytest.mark.parametrize("method", ["class_mean", "normalized_mean", "pairwise_mean"])
def test_similarity_is_symmetric_and_bounded(method):
    s = class_similarity(random_classes(), method=method)
    assert torch.equal(s, s.T)
    assert s.abs().max() <= 1 + 1e-6


def test_class_mean_diagonal_is_one_and_pairwise_diagonal_is_below_one_for_spread_classes():
    classes = random_classes(sizes=(3, 4))
    assert torch.allclose(class_similarity(classes, "class_mean").diagonal(), torch.ones(2))
    assert (class_similarity(classes, "pairwise_mean").diagonal() < 1 - 1e-3).all()


@pytest.mark.parametrize("method", ["class_mean", "pairwise_mean"])
def test_identical_classes_have_similarity_one(method):
    x = torch.randn(1, 8)
    same = [x.repeat(3, 1), 2.5 * x.repeat(2, 1), torch.randn(4, 8)]  # scale does not matter
    s = class_similarity(same, method=method)
    assert s[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert s[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_similarity_is_invariant_to_embedding_scale():
    classes = random_classes()
    scaled = [3.0 * e for e in classes]
    for method in ("class_mean", "normalized_mean", "pairwise_mean"):
        assert torch.allclose(class_similarity(classes, method), class_similarity(scaled, method))


def test_bad_similarity_inputs_are_refused():
    with pytest.raises(DataError):
        class_similarity([])
    with pytest.raises(DataError, match="no image embeddings"):
        class_similarity([torch.randn(2, 4), torch.zeros(0, 4)])
    with pytest.raises(DataError, match="same D"):
        class_similarity([torch.randn(2, 4), torch.randn(2, 5)])
    with pytest.raises(ConfigError, match="method"):
        class_similarity(random_classes(), method="max")  # type: ignore[arg-type]


# ------------------------------------------------------------------ negative distribution


def explicit_negative_distribution(s: np.ndarray, tau: float) -> np.ndarray:
    """The formula as the paper states it: softmax, zero the diagonal, renormalise the rows."""
    e = np.exp(s / tau - (s / tau).max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    np.fill_diagonal(p, 0.0)
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [0.4, 0.05, 2.0])
def test_masked_softmax_equals_softmax_zero_diagonal_renormalise(tau):
    s = class_similarity(random_classes(sizes=(2, 3, 1, 5, 2)))
    got = negative_distribution(s, temperature=tau)
    expected = explicit_negative_distribution(s.double().numpy(), tau)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_negative_distribution_has_zero_diagonal_and_rows_summing_to_one():
    p = negative_distribution(class_similarity(random_classes()))
    assert torch.all(p.diagonal() == 0)
    assert torch.allclose(p.sum(dim=1), torch.ones(4), atol=1e-6)
    assert torch.all(p >= 0)


def test_default_temperature_is_the_papers():
    s = class_similarity(random_classes())
    assert torch.equal(negative_distribution(s), negative_distribution(s, temperature=0.4))


def test_more_similar_class_is_more_likely():
    s = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    p = negative_distribution(s)
    assert p[0, 1] > p[0, 2]
    assert p[2, 1] > p[2, 0]
    # Two choices: P = sigmoid((S[a,b] - S[a,c]) / tau).
    assert p[0, 1].item() == pytest.approx(1 / (1 + math.exp(-(0.9 - 0.1) / 0.4)), abs=1e-6)


def test_lower_temperature_is_sharper():
    s = class_similarity(random_classes())

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)

    sharp, default, flat = (negative_distribution(s, t) for t in (0.05, 0.4, 10.0))
    assert torch.all(entropy(sharp) < entropy(default))
    assert torch.all(entropy(default) < entropy(flat))
    assert torch.allclose(negative_distribution(s, 1e6), uniform_distribution(4), atol=1e-5)


def test_one_class_has_no_negative():
    with pytest.raises(DataError, match="generation.mode=single"):
        negative_distribution(torch.ones(1, 1))
    with pytest.raises(DataError, match="generation.mode=single"):
        uniform_distribution(1)


@pytest.mark.parametrize("tau", [0.0, -0.4, float("nan"), float("inf")])
def test_non_positive_temperature_is_refused(tau):
    with pytest.raises(ConfigError, match="temperature"):
        negative_distribution(torch.eye(3), temperature=tau)


def test_non_square_similarity_is_refused():
    with pytest.raises(DataError, match="square"):
        negative_distribution(torch.ones(2, 3))


def test_uniform_distribution():
    p = uniform_distribution(5)
    assert torch.all(p.diagonal() == 0)
    off = p[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 0.25))
    assert torch.allclose(p.sum(dim=1), torch.ones(5))


# ------------------------------------------------------------------ CLIP model path


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=99,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            image_size=30,
            patch_size=2,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    )
    return model, processor


def noise_image(seed: int, size=(40, 34)) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_embed_images_shape_dtype_and_determinism(tiny_clip):
    model, processor = tiny_clip
    images = [noise_image(i) for i in range(5)]
    first = embed_images(model, processor, images, batch_size=2)
    second = embed_images(model, processor, images, batch_size=2)
    assert first.shape == (5, 32)
    assert first.dtype == torch.float32 and first.device.type == "cpu"
    assert torch.equal(first, second)
    assert not torch.allclose(first[0], first[1])


def test_embed_images_does_not_depend_on_batch_size(tiny_clip):
    model, processor = tiny_clip
    images = [noise_image(i) for i in range(5)]
    one = embed_images(model, processor, images, batch_size=1)
    four = embed_images(model, processor, images, batch_size=4)
    assert torch.allclose(one, four, atol=1e-5)


def test_embed_images_matches_the_projected_vision_output(tiny_clip):
    model, processor = tiny_clip
    images = [noise_image(i) for i in range(2)]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixel_values).pooler_output
        expected = model.visual_projection(pooled)
    assert torch.allclose(embed_images(model, processor, images), expected, atol=1e-6)


def test_embed_images_with_a_vision_model_with_projection(tiny_clip):
    from transformers import CLIPVisionModelWithProjection

    model, processor = tiny_clip
    vision_config = model.config.vision_config.__class__(
        **{**model.config.vision_config.to_dict(), "projection_dim": model.config.projection_dim}
    )
    vision = CLIPVisionModelWithProjection(vision_config).eval()
    vision.vision_model.load_state_dict(model.vision_model.state_dict())
    vision.visual_projection.load_state_dict(model.visual_projection.state_dict())
    images = [noise_image(i) for i in range(3)]
    assert torch.allclose(
        embed_images(vision, processor, images), embed_images(model, processor, images), atol=1e-5
    )


def write_split(root, counts: dict[str, int]) -> dict[str, list]:
    split = {}
    seed = 0
    for name, count in counts.items():
        files = []
        for i in range(count):
            path = root / f"{name.replace(' ', '_')}_{i}.png"
            noise_image(seed).save(path)
            seed += 1
            files.append(path)
        split[name] = files
    return split


def test_compute_save_load_round_trip(tiny_clip, tmp_path):
    model, processor = tiny_clip
    split = write_split(tmp_path, {"zebra": 2, "ant": 3, "sea lion": 1, "bee": 2})
    result = compute_class_similarity(
        split, model, processor, method="class_mean", temperature=0.4, sampling="similarity",
        batch_size=3, device="cpu", load_image=lambda p: Image.open(p).convert("RGB"),
        model_id="tiny-clip",
    )
    assert result.classes == ["ant", "bee", "sea lion", "zebra"]
    assert result.similarity.shape == (4, 4)
    assert torch.allclose(result.negative_probs, negative_distribution(result.similarity, 0.4))

    # S agrees with embedding the classes one by one.
    per_class = [
        embed_images(model, processor, [Image.open(p).convert("RGB") for p in split[c]])
        for c in result.classes
    ]
    assert torch.allclose(result.similarity, class_similarity(per_class), atol=1e-5)

    out = tmp_path / "similarity"
    result.save(out)
    loaded = SimilarityResult.load(out)
    assert loaded.classes == result.classes
    assert torch.equal(loaded.similarity, result.similarity)
    assert torch.equal(loaded.negative_probs, result.negative_probs)
    assert (loaded.method, loaded.temperature, loaded.sampling, loaded.model_id) == (
        "class_mean", 0.4, "similarity", "tiny-clip"
    )

    from safetensors import safe_open

    with safe_open(str(out / SIMILARITY_FILE), framework="pt") as handle:
        assert json.loads(handle.metadata()["classes"]) == result.classes

    with open(out / NEGATIVES_FILE, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == result.classes
    assert list(rows[0]) == ["class", "negative_1", "p_1", "negative_2", "p_2", "negative_3", "p_3"]
    for row in rows:
        negatives = [row[f"negative_{k}"] for k in (1, 2, 3)]
        probs = [float(row[f"p_{k}"]) for k in (1, 2, 3)]
        assert row["class"] not in negatives and len(set(negatives)) == 3
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)

    table = loaded.as_dict()
    assert set(table) == set(result.classes)
    for name, row in table.items():
        assert name not in row
        assert set(row) == set(result.classes) - {name}
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-6)
    assert not list(out.glob(".tmp-*"))


def test_csv_lists_at_most_five_negatives():
    classes = [f"c{i}" for i in range(8)]
    s = class_similarity(random_classes(sizes=(2,) * 8))
    result = SimilarityResult(classes, s, negative_distribution(s))
    header = result._negatives_csv().splitlines()[0].split(",")
    assert header[-2:] == ["negative_5", "p_5"]


def test_uniform_sampling_keeps_the_similarity(tiny_clip, tmp_path):
    model, processor = tiny_clip
    split = write_split(tmp_path, {"a": 2, "b": 2, "c": 1})
    result = compute_class_similarity(split, model, processor, sampling="uniform", batch_size=4)
    assert torch.equal(result.negative_probs, uniform_distribution(3))
    assert not torch.allclose(result.similarity, torch.zeros(3, 3))
    result.save(tmp_path / "out")
    assert SimilarityResult.load(tmp_path / "out").sampling == "uniform"


def test_default_loader_reads_files(tiny_clip, tmp_path):
    model, processor = tiny_clip
    split = write_split(tmp_path, {"a": 1, "b": 2})
    result = compute_class_similarity(split, model, processor)
    assert result.classes == ["a", "b"]


def test_class_without_images_is_named(tiny_clip, tmp_path):
    model, processor = tiny_clip
    split = write_split(tmp_path, {"cat": 1, "dog": 1})
    split["wolf"] = []
    with pytest.raises(DataError, match="'wolf'"):
        compute_class_similarity(split, model, processor)


def test_single_class_split_is_refused(tiny_clip, tmp_path):
    model, processor = tiny_clip
    split = write_split(tmp_path, {"cat": 2})
    with pytest.raises(DataError, match="generation.mode=single"):
        compute_class_similarity(split, model, processor)


def test_corrupt_image_is_named(tiny_clip, tmp_path):
    model, processor = tiny_clip
    split = write_split(tmp_path, {"cat": 1, "dog": 1})
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    split["dog"].append(bad)
    with pytest.raises(DataError, match="broken.png"):
        compute_class_similarity(split, model, processor)


def test_loading_a_missing_result_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="synthshot similarity"):
        SimilarityResult.load(tmp_path)


def test_result_shape_must_match_classes():
    with pytest.raises(DataError, match="shape"):
        SimilarityResult(["a", "b", "c"], torch.eye(2), uniform_distribution(2))


def test_a_similarity_file_of_the_old_class_mean_formula_is_computed_again(tmp_path, tiny_kit):
    """Files written before class_mean followed the official formula (no `format`) are not reused."""
    from safetensors.torch import load_file, save_file

    from synthshot.config import load_config
    from synthshot.experiment import Experiment
    from synthshot.runs import run_stage

    config = load_config(None, [f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={tiny_kit}", "offline=true",
                                "data.demo.classes=3", "data.demo.images_per_class=3", "data.demo.size=32",
                                "data.shots=2"])
    run_stage(Experiment(config), "similarity", echo=lambda *_: None)
    path = Path(config.output_dir) / "similarity" / "similarity.safetensors"
    said = []
    run_stage(Experiment(config), "similarity", echo=said.append)
    assert "(up to date)" in said[0]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    assert metadata.pop("format") == "2"
    save_file(load_file(str(path)), str(path), metadata=metadata)  # as an earlier version wrote it
    said = []
    run_stage(Experiment(config), "similarity", echo=said.append)
    assert "(up to date)" not in said[0]
    assert SimilarityResult.load(path.parent).format == 2
