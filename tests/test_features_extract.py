"""Feature extraction on the tiny kit's real CLIP: single scale is CLIP's own image feature,
multi-scale is LGCLIP's weighted crops in one forward per batch, and the cache reuses exactly
what is unchanged and never mixes features of another model or other settings."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.errors import ConfigError, DataError
from synthshot.features.backends import load_image_encoder
from synthshot.features.cache import sidecar_path
from synthshot.features.extract import encode_pil_images, extract_features, load_feature_set
from synthshot.features.multiscale import ALL_SCALES, crop_boxes, crop_seed, scale_weights
from synthshot.features.preprocess import crop_pixels
from synthshot.models.clip import load_clip

SIZES = [(48, 40), (40, 40), (64, 36), (30, 50), (45, 45), (52, 39), (33, 61)]


def _write_image(path, size, seed):
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return [_write_image(folder / f"img{i}.png", size, seed=i) for i, size in enumerate(SIZES)]


@pytest.fixture
def encoder(tiny_kit, hub_options):
    return load_image_encoder(str(tiny_kit / "clip"), hub_options)


def count_calls(encoder, monkeypatch) -> list[int]:
    """Record the batch size of every encoder forward (the real encoder still runs)."""
    calls: list[int] = []
    encode = encoder.encode

    def counted(pixel_values):
        calls.append(int(pixel_values.shape[0]))
        return encode(pixel_values)

    monkeypatch.setattr(encoder, "encode", counted)
    return calls


def _image_features(model, pixels):
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


def test_single_scale_is_clip_image_features_of_the_processor_output(tiny_kit, hub_options, encoder, images):
    bundle = load_clip(str(tiny_kit / "clip"), hub_options)
    pils = [Image.open(path).convert("RGB") for path in images]
    expected = _image_features(bundle.model, bundle.processor(images=pils, return_tensors="pt")["pixel_values"])
    result = extract_features(encoder, images, multiscale=False, batch_size=3, progress=False)
    assert result.files == images
    assert result.features.shape == (len(images), encoder.dim) and result.features.dtype == torch.float32
    assert torch.allclose(result.features, expected, atol=1e-5)
    assert torch.allclose(encode_pil_images(encoder, pils), expected, atol=1e-5)


def test_multiscale_is_the_weighted_combination_of_separately_encoded_crops(encoder, images):
    seed = 3
    result = extract_features(encoder, images[:3], multiscale=True, seed=seed, batch_size=2, progress=False)
    for path, feature in zip(images[:3], result.features):
        image = Image.open(path).convert("RGB")
        boxes = crop_boxes(image.width, image.height, ALL_SCALES, crop_seed(seed, image))
        expected = torch.zeros(encoder.dim)
        for weight, box in zip(scale_weights(ALL_SCALES), boxes):
            z = _image_features(encoder.model, crop_pixels(image, encoder.spec, box)[None])[0]
            expected += weight * z
        assert torch.allclose(feature, expected / expected.norm(), atol=1e-5)
    assert torch.allclose(result.features.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_scale_10_alone_is_the_whole_image_or_its_4_3_centre_crop_resized(encoder, images):
    square = images[1]  # 40x40: resizing the whole image is also what the processor does
    wide = images[2]  # 64x36: wider than 4/3, so RandomResizedCrop falls back to a 48x36 centre crop
    result = extract_features(encoder, [square, wide], multiscale=True, scales=[10], batch_size=2, progress=False)
    single = extract_features(encoder, [square, wide], multiscale=False, batch_size=2, progress=False)
    assert torch.allclose(result.features[0], single.features[0], atol=1e-5)
    box = (8.0, 0.0, 56.0, 36.0)
    centre = _image_features(encoder.model, crop_pixels(Image.open(wide).convert("RGB"), encoder.spec, box)[None])[0]
    assert torch.allclose(result.features[1], centre, atol=1e-5)
    assert not torch.allclose(result.features[1], single.features[1], atol=1e-3)


def test_all_crops_of_a_batch_go_through_one_forward(encoder, images, monkeypatch):
    calls = count_calls(encoder, monkeypatch)
    extract_features(encoder, images[:5], multiscale=True, scales=[2, 6, 10], batch_size=2, progress=False)
    assert calls == [6, 6, 3]


def test_batch_size_and_file_order_never_change_a_feature(encoder, images):
    reference = extract_features(encoder, images, multiscale=True, batch_size=1, progress=False).features
    for batch_size in (3, len(images)):
        other = extract_features(encoder, images, multiscale=True, batch_size=batch_size, progress=False)
        assert torch.allclose(other.features, reference, atol=1e-5)
    shuffled = extract_features(encoder, images[::-1], multiscale=True, batch_size=4, workers=0, progress=False)
    assert torch.allclose(shuffled.features.flip(0), reference, atol=1e-5)


def test_cache_reuses_unchanged_files_and_recomputes_changed_and_new_ones(encoder, images, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "features.safetensors"
    first = extract_features(encoder, images[:5], multiscale=True, batch_size=4, cache=cache, progress=False)
    assert cache.is_file() and sidecar_path(cache).is_file()
    calls = count_calls(encoder, monkeypatch)

    again = extract_features(encoder, images[:5], multiscale=True, batch_size=4, cache=cache, progress=False)
    assert calls == [] and torch.equal(again.features, first.features)

    # A file rewritten with other pixels is recomputed, alone.
    _write_image(images[2], SIZES[2], seed=99)
    changed = extract_features(encoder, images[:5], multiscale=True, batch_size=4, cache=cache, progress=False)
    assert calls == [10]
    assert not torch.allclose(changed.features[2], first.features[2], atol=1e-3)
    assert torch.equal(changed.features[[0, 1, 3, 4]], first.features[[0, 1, 3, 4]])

    # An added file is computed alone; a touched but identical file is found by its content.
    os.utime(images[0], ns=(1, 1))
    added = extract_features(encoder, images[:6], multiscale=True, batch_size=4, cache=cache, progress=False)
    assert calls == [10, 10]
    assert torch.equal(added.features[:5], changed.features)
    assert load_feature_set(cache).files == [path.resolve() for path in images[:6]]
    assert torch.equal(load_feature_set(cache).features, added.features)


def test_cache_of_another_model_or_other_settings_is_recomputed_with_a_log_line(
    encoder, tiny_kit, hub_options, images, tmp_path, monkeypatch, caplog
):
    cache = tmp_path / "features.safetensors"
    extract_features(encoder, images[:2], multiscale=True, batch_size=2, cache=cache, progress=False)
    calls = count_calls(encoder, monkeypatch)
    caplog.set_level(logging.WARNING, logger="synthshot.features")

    extract_features(encoder, images[:2], multiscale=True, scales=[5, 10], batch_size=2, cache=cache, progress=False)
    assert calls == [4]
    assert "other settings" in caplog.text and "scales" in caplog.text

    # The same folder with other weights (a fine-tuned copy saved over it, say).
    other = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    with torch.no_grad():
        other.model.visual_projection.weight.mul_(-1.0)
    other_calls = count_calls(other, monkeypatch)
    caplog.clear()
    result = extract_features(other, images[:2], multiscale=True, scales=[5, 10], batch_size=2, cache=cache)
    assert other_calls == [4] and "another model" in caplog.text and "weights_sha256" in caplog.text
    assert load_feature_set(cache).encoder == other.fingerprint
    assert torch.equal(load_feature_set(cache).features, result.features)

    # Another model folder, behind a long path: the message names it in full, wherever the test runs.
    copy = tmp_path / ("a-folder-with-a-long-name-" * 4) / "clip-copy"
    shutil.copytree(tiny_kit / "clip", copy)
    moved = load_image_encoder(str(copy), hub_options)
    moved_calls = count_calls(moved, monkeypatch)
    caplog.clear()
    extract_features(moved, images[:2], multiscale=True, scales=[5, 10], batch_size=2, cache=cache, progress=False)
    assert moved_calls == [4] and "another model" in caplog.text and f"-> {copy}" in caplog.text


@pytest.mark.parametrize("damage", ["sidecar", "tensor", "mismatch"])
def test_a_corrupt_cache_is_recomputed_with_a_log_line(encoder, images, tmp_path, monkeypatch, caplog, damage):
    cache = tmp_path / "features.safetensors"
    first = extract_features(encoder, images[:3], multiscale=False, batch_size=3, cache=cache, progress=False)
    if damage == "sidecar":
        sidecar_path(cache).write_text('{"format": "synthshot-features/1", "files": [')
    elif damage == "tensor":
        cache.write_bytes(b"not a safetensors file")
    else:  # a tensor from another run next to this sidecar (a kill between the two writes)
        extract_features(encoder, images[3:6], multiscale=False, batch_size=3, cache=tmp_path / "x.safetensors")
        shutil.copy(tmp_path / "x.safetensors", cache)
    calls = count_calls(encoder, monkeypatch)
    caplog.set_level(logging.WARNING, logger="synthshot.features")
    again = extract_features(encoder, images[:3], multiscale=False, batch_size=3, cache=cache, progress=False)
    assert calls == [3] and "recomputing all features" in caplog.text
    assert torch.allclose(again.features, first.features, atol=1e-6)
    assert torch.equal(load_feature_set(cache).features, again.features)


def test_an_unreadable_image_fails_clearly_and_keeps_the_features_already_computed(
    encoder, images, tmp_path, monkeypatch
):
    cache = tmp_path / "features.safetensors"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="broken.png"):
        extract_features(encoder, [*images[:3], broken], multiscale=False, batch_size=1, workers=0, cache=cache)
    calls = count_calls(encoder, monkeypatch)
    extract_features(encoder, images[:3], multiscale=False, batch_size=1, cache=cache, progress=False)
    assert calls == []


def test_an_interrupted_run_keeps_its_finished_batches(encoder, images, tmp_path, monkeypatch):
    cache = tmp_path / "features.safetensors"
    encode = encoder.encode
    calls = []

    def interrupted(pixel_values):
        calls.append(len(pixel_values))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(pixel_values)

    monkeypatch.setattr(encoder, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_features(encoder, images, multiscale=False, batch_size=2, cache=cache, progress=False)
    assert len(load_feature_set(cache)) == 4
    monkeypatch.setattr(encoder, "encode", encode)
    calls = count_calls(encoder, monkeypatch)
    result = extract_features(encoder, images, multiscale=False, batch_size=2, cache=cache, progress=False)
    assert calls == [2, 1] and len(result) == len(images)


def test_bad_inputs_are_clear_errors(encoder, images, tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        extract_features(encoder, [images[0], tmp_path / "missing.png"], multiscale=False, progress=False)
    with pytest.raises(ConfigError, match="safetensors"):
        extract_features(encoder, images[:1], multiscale=False, cache=tmp_path / "features.pt", progress=False)
    with pytest.raises(ConfigError, match="1..10"):
        extract_features(encoder, images[:1], multiscale=True, scales=[0, 5], progress=False)
    with pytest.raises(DataError, match="does not exist"):
        load_feature_set(tmp_path / "none.safetensors")
