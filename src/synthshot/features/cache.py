"""The feature cache: `<name>.safetensors` (one tensor `features` [N, D], float32) and the sidecar
`<name>.json`:

    format            "synthshot-features/1"
    encoder           the encoder's fingerprint (backend, model, weights digest, adapter, dtype,
                      preprocessing, crop constants)
    settings          {"multiscale": false} or the multi-scale scales, seed, aspect-ratio range, weights
    files             one record per row: absolute path, size, mtime_ns, sha256 of the bytes
    features_sha256   sha256 of the tensor's bytes: ties the two files together

File fingerprints: a file whose size and mtime_ns match its record is taken as unchanged without
reading it (as git's index does); any other file is hashed, and a row whose sha256 matches is
reused wherever it came from (a feature depends on the pixels, never on the path). A changed file
therefore costs one read to detect, an unchanged one none.

A cache made by another encoder or with other settings is reported in a log line and recomputed,
never mixed; so is a corrupt or inconsistent pair of files. Both files are written atomically, the
tensor first; a kill between the two leaves a pair whose digests disagree, which is recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from synthshot.errors import ConfigError, DataError, describe_changes
from synthshot.io import atomic_write_bytes, atomic_write_json, parse_json

logger = logging.getLogger("synthshot.features")

FORMAT = "synthshot-features/1"
TENSOR_KEY = "features"


@dataclass(frozen=True)
class FileRecord:
    """What the cache knows about one file."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


def file_key(path: Path) -> str:
    """A file's identity in the sidecar: its absolute, resolved path."""
    return str(Path(path).expanduser().resolve())


def stat_file(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist: check the folder, split or manifest") from None
    return stat.st_size, stat.st_mtime_ns


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_sha256(features: Tensor) -> str:
    return hashlib.sha256(features.contiguous().numpy().tobytes()).hexdigest()


def check_cache_path(cache: Path) -> Path:
    cache = Path(cache)
    if cache.suffix != ".safetensors":
        raise ConfigError(f"feature cache {cache} must be a .safetensors file (its sidecar is <name>.json)")
    return cache


def sidecar_path(cache: Path) -> Path:
    return Path(cache).with_suffix(".json")


@dataclass
class CachedFeatures:
    """A cache's rows, found by path (with size and mtime) or by content."""

    encoder: dict
    settings: dict
    records: list[FileRecord]
    features: Tensor

    def __post_init__(self):
        self._by_path = {record.path: i for i, record in enumerate(self.records)}
        self._by_sha = {record.sha256: i for i, record in enumerate(self.records)}

    def unchanged(self, path: str, size: int, mtime_ns: int) -> int | None:
        """The row of `path` if its size and mtime are those recorded."""
        row = self._by_path.get(path)
        if row is not None and (self.records[row].size, self.records[row].mtime_ns) == (size, mtime_ns):
            return row
        return None

    def with_content(self, sha256: str) -> int | None:
        return self._by_sha.get(sha256)

    @classmethod
    def merge(cls, caches: list[CachedFeatures]) -> CachedFeatures:
        """One lookup over several caches of the same encoder and settings (e.g. the parts that
        several processes computed); a path or content found twice keeps its first row."""
        import torch

        records = [record for cache in caches for record in cache.records]
        merged = cls(caches[0].encoder, caches[0].settings, records, torch.cat([c.features for c in caches]))
        merged._by_path = {r.path: i for i, r in reversed(list(enumerate(records)))}
        merged._by_sha = {r.sha256: i for i, r in reversed(list(enumerate(records)))}
        return merged


def read_cache(cache: Path) -> CachedFeatures:
    """Read a cache pair; a missing, corrupt or inconsistent one is a DataError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cache = check_cache_path(cache)
    sidecar = sidecar_path(cache)
    try:
        meta = parse_json(sidecar.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} sidecar")
        records = [FileRecord(**record) for record in meta["files"]]
        encoder, settings, expected = meta["encoder"], meta["settings"], meta["features_sha256"]
    except FileNotFoundError:
        raise DataError(f"feature cache sidecar {sidecar} does not exist: run `synthshot features` again") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"feature cache sidecar {sidecar} is corrupt ({exc}): delete it or run features again"
        ) from None
    try:
        features = load_file(str(cache))[TENSOR_KEY]
    except FileNotFoundError:
        raise DataError(f"feature cache {cache} does not exist next to its sidecar: run features again") from None
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise DataError(f"feature cache {cache} is corrupt ({exc}): delete it or run features again") from None
    if features.ndim != 2 or features.shape[0] != len(records) or tensor_sha256(features) != expected:
        raise DataError(
            f"feature cache {cache} does not match its sidecar {sidecar.name} (interrupted write?): "
            "delete both or run features again"
        )
    return CachedFeatures(encoder, settings, records, features)


def load_reusable(cache: Path, encoder: dict, settings: dict) -> CachedFeatures | None:
    """The cache at `cache` if it was made by this encoder with these settings; else None, with a
    log line saying why its features are not used."""
    if not Path(cache).exists() and not sidecar_path(cache).exists():
        return None
    try:
        cached = read_cache(cache)
    except DataError as exc:
        logger.warning("%s; recomputing all features", exc)
        return None
    if cached.encoder != encoder:
        logger.warning(
            "feature cache %s was made by another model (%s): recomputing all features",
            cache,
            "; ".join(describe_changes(cached.encoder, encoder)),
        )
        return None
    if cached.settings != settings:
        logger.warning(
            "feature cache %s was made with other settings (%s): recomputing all features",
            cache,
            "; ".join(describe_changes(cached.settings, settings)),
        )
        return None
    return cached


def write_cache(cache: Path, encoder: dict, settings: dict, records: list[FileRecord], features: Tensor) -> None:
    """Write the tensor, then the sidecar, each atomically."""
    from safetensors.torch import save

    if features.shape[0] != len(records):
        raise ValueError(f"{features.shape[0]} feature rows for {len(records)} files")
    features = features.detach().to("cpu", torch.float32).contiguous()
    atomic_write_bytes(cache, save({TENSOR_KEY: features}, metadata={"format": FORMAT}))
    atomic_write_json(
        sidecar_path(cache),
        {
            "format": FORMAT,
            "encoder": encoder,
            "settings": settings,
            "count": len(records),
            "dim": int(features.shape[1]) if features.ndim == 2 else 0,
            "features_sha256": tensor_sha256(features),
            "fingerprints": "size + mtime_ns; sha256 of the bytes when they differ",
            "files": [asdict(record) for record in records],
        },
    )
