"""Encode image files into L2-normalised CLIP features, single- or multi-scale (LGCLIP), with the
per-file cache of `cache.py`.

Images are decoded and cut into pixels by a few threads (PIL releases the GIL), one batch ahead of
the encoder; all the crops of a batch of images go through the encoder in one forward. A crop
depends only on the seed and the image's pixels, so neither the batch size nor the order of the
files changes a feature.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from synthshot.data.folders import load_rgb
from synthshot.errors import ConfigError
from synthshot.features.backends import ImageEncoder
from synthshot.features.cache import (
    CachedFeatures,
    FileRecord,
    check_cache_path,
    file_key,
    load_reusable,
    read_cache,
    sha256_file,
    stat_file,
    write_cache,
)
from synthshot.features.multiscale import (
    ALL_SCALES,
    ASPECT_RATIO_RANGE,
    CROP_SAMPLING,
    check_scales,
    combine_scales,
)

logger = logging.getLogger("synthshot.features")

# A long extraction saves what it has at least this often, so a kill loses at most this much work.
CHECKPOINT_SECONDS = 120.0


@dataclass
class FeatureSet:
    """Features of image files: row i of `features` [N, D] (float32, L2-normalised) is `files[i]`."""

    files: list[Path]
    features: Tensor
    encoder: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)


def feature_settings(multiscale: bool, scales: Sequence[int] = ALL_SCALES, seed: int = 0) -> dict:
    """What besides the encoder decides a feature (recorded in the cache sidecar). Scales and seed
    mean nothing for single-scale features, so they are left out there."""
    if not multiscale:
        return {"multiscale": False}
    return {
        "multiscale": True,
        "scales": check_scales(scales),
        "seed": int(seed),
        "aspect_ratio_range": [float(v) for v in ASPECT_RATIO_RANGE],
        "crop_sampling": CROP_SAMPLING,
        "weights": "s/sum(scales)",
    }


def image_pixels(encoder: ImageEncoder, image: Image.Image, settings: dict) -> Tensor:
    """The encoder input for one image: [1, 3, H, W] single-scale, [S, 3, H, W] multi-scale."""
    if settings["multiscale"]:
        return encoder.crops(image, settings["scales"], settings["seed"])
    return encoder.preprocess([image])


def encode_pixels(encoder: ImageEncoder, pixels: Sequence[Tensor], settings: dict) -> Tensor:
    """One encoder forward over the pixels of several images; one feature per image, [B, D]."""
    embeddings = encoder.encode(torch.cat(list(pixels))).float().cpu()
    if settings["multiscale"]:
        scales = settings["scales"]
        return combine_scales(embeddings.view(len(pixels), len(scales), -1), scales)
    return torch.nn.functional.normalize(embeddings, dim=-1)


def encode_pil_images(
    encoder: ImageEncoder,
    images: Sequence[Image.Image],
    *,
    multiscale: bool = False,
    scales: Sequence[int] = ALL_SCALES,
    seed: int = 0,
) -> Tensor:
    """Features of images in memory, in one forward: [N, D] float32, L2-normalised."""
    settings = feature_settings(multiscale, scales, seed)
    if not images:
        return torch.empty(0, encoder.dim)
    return encode_pixels(encoder, [image_pixels(encoder, image, settings) for image in images], settings)


def _prepared_batches(
    files: Sequence[Path], batch_size: int, prepare, workers: int
) -> Iterator[tuple[list[int], list[Tensor]]]:
    """(indices, pixels) per batch of `files`, prepared by `workers` threads two batches ahead."""
    batches = [list(range(start, min(start + batch_size, len(files)))) for start in range(0, len(files), batch_size)]
    if workers <= 0:
        for batch in batches:
            yield batch, [prepare(files[i]) for i in batch]
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthshot-features")
    try:
        pending: deque[tuple[list[int], list[Future]]] = deque()
        upcoming = iter(batches)
        for batch in upcoming:
            pending.append((batch, [pool.submit(prepare, files[i]) for i in batch]))
            if len(pending) == 2:
                break
        while pending:
            batch, futures = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, [pool.submit(prepare, files[i]) for i in following]))
            yield batch, [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def extract_features(
    encoder: ImageEncoder,
    files: Sequence[Path],
    *,
    multiscale: bool,
    scales: Sequence[int] = ALL_SCALES,
    seed: int = 0,
    batch_size: int = 32,
    cache: Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    reuse: Sequence[Path] = (),
) -> FeatureSet:
    """Features of image files, [N, D] in the order of `files`.

    multiscale: LGCLIP's weighted crops at `scales` (crop seed from `seed` and the pixels), else the
    encoder's own preprocessing. batch_size: images per encoder forward (all their crops together).
    cache: a `<name>.safetensors` file (sidecar `<name>.json`); rows of unchanged files made by the
    same encoder with the same settings are reused, the rest computed, and the cache rewritten with
    exactly `files`. workers: image-decoding threads (default min(4, CPUs); 0 decodes inline).
    reuse: other caches (same encoder and settings) whose rows are taken like the cache's own, e.g.
    the parts several processes computed, merged into `cache` without encoding anything again.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"features.batch_size must be >= 1, got {batch_size}")
    settings = feature_settings(multiscale, scales, seed)
    fingerprint = encoder.fingerprint
    files = [Path(f) for f in files]
    keys = [file_key(f) for f in files]
    stats = [stat_file(f) for f in files]  # a missing file fails before any work
    workers = min(4, os.cpu_count() or 1) if workers is None else workers

    # 1. What the cache already holds: unchanged paths first, then identical contents.
    cache = check_cache_path(cache) if cache is not None else None
    cached: CachedFeatures | None = load_reusable(cache, fingerprint, settings) if cache is not None else None
    found = [c for c in (cached, *(load_reusable(check_cache_path(p), fingerprint, settings) for p in reuse)) if c]
    cached = CachedFeatures.merge(found) if len(found) > 1 else (found[0] if found else None)
    rows: dict[int, Tensor] = {}
    shas: list[str | None] = [None] * len(files)
    if cache is not None:
        to_hash = []
        for i, (key, (size, mtime_ns)) in enumerate(zip(keys, stats)):
            row = cached.unchanged(key, size, mtime_ns) if cached is not None else None
            if row is not None:
                shas[i] = cached.records[row].sha256
                rows[i] = cached.features[row]
            else:
                to_hash.append(i)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, sha in zip(to_hash, pool.map(sha256_file, [files[i] for i in to_hash])):
                shas[i] = sha
                row = cached.with_content(sha) if cached is not None else None
                if row is not None:
                    rows[i] = cached.features[row]

    # 2. Each distinct image still missing is encoded once; duplicates copy its row.
    identity = shas if cache is not None else keys
    first: dict[str, int] = {}
    todo: list[int] = []
    for i in range(len(files)):
        if i not in rows and identity[i] not in first:
            first[identity[i]] = i
            todo.append(i)
    reused = len(rows)
    if cache is not None:
        logger.info("features: %d files, %d reused from %s, %d to compute", len(files), reused, cache, len(todo))

    def finished() -> list[int]:
        return [i for i in range(len(files)) if i in rows or first.get(identity[i]) in rows]

    def stacked(indices) -> Tensor:
        features = [rows[i] if i in rows else rows[first[identity[i]]] for i in indices]
        return torch.stack(features) if features else torch.empty(0, encoder.dim)

    def save() -> None:
        done = finished()
        records, features = [FileRecord(keys[i], *stats[i], shas[i]) for i in done], stacked(done)
        if cached is not None and records == cached.records and torch.equal(features, cached.features):
            return
        write_cache(cache, fingerprint, settings, records, features)

    # 3. Encode in batches, saving now and then, at the end, and on the way out of an error or a kill.
    def prepare(path: Path) -> Tensor:
        return image_pixels(encoder, load_rgb(path), settings)

    computed = 0
    last_save = time.monotonic()
    try:
        with tqdm(total=len(todo), desc="features", unit="img", disable=not progress) as bar:
            for batch, pixels in _prepared_batches([files[i] for i in todo], batch_size, prepare, workers):
                features = encode_pixels(encoder, pixels, settings)
                for j, feature in zip(batch, features):
                    rows[todo[j]] = feature
                computed += len(batch)
                bar.update(len(batch))
                if cache is not None and computed < len(todo) and time.monotonic() - last_save > checkpoint_seconds:
                    save()
                    last_save = time.monotonic()
    except BaseException:
        if cache is not None and computed:
            try:
                save()
            except OSError as exc:  # the original error matters more
                logger.warning("could not save the %d features computed before the error: %s", computed, exc)
        raise
    if cache is not None:
        save()
    return FeatureSet(files=files, features=stacked(range(len(files))), encoder=fingerprint, settings=settings)


def load_feature_set(cache: Path) -> FeatureSet:
    """The features stored in a cache, as written by `extract_features` (DataError if unusable)."""
    cached = read_cache(cache)
    return FeatureSet(
        files=[Path(record.path) for record in cached.records],
        features=cached.features,
        encoder=cached.encoder,
        settings=cached.settings,
    )
