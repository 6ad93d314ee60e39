"""``synthshot datasets verify``: re-check a prepared dataset folder without the network.

Checks the split files against the manifest's hashes, every split path on disk, labels (in
range, one name each), the registry's class names, the expected counts, the hashes of the placed
files, and (``archives=True``) of the downloads still in ``ROOT/.cache``. With ``decode=True``
every image is also decoded, which finds truncated or non-image files (SUN397 has a few).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from synthshot.data.registry import get_dataset
from synthshot.datasets.download import hash_file
from synthshot.datasets.layouts import MissingImagesError, check_split
from synthshot.datasets.prepare import read_manifest
from synthshot.datasets.registry import SPLITS, load_source
from synthshot.errors import DataError


@dataclass
class VerifyReport:
    dataset: str
    folder: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # protocol -> split -> images
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_split_rows(path: Path) -> dict[str, list[list]]:
    """The rows of a CoOp split file as written by prepare (no path resolution, no name rules)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in SPLITS):
        raise DataError(f"split file {path} is not a CoOp split (train/val/test lists)")
    return {s: data[s] for s in SPLITS}


def verify_dataset(
    name: str,
    root: str | Path,
    protocol: str | None = None,
    *,
    archives: bool = True,
    decode: bool = False,
    registry_dir: str | Path | None = None,
    echo=print,
) -> VerifyReport:
    source = load_source(name, registry_dir)
    info = get_dataset(source.name)
    root = Path(root).expanduser().absolute()
    folder = root / source.dir
    report = VerifyReport(source.name, folder)
    manifest = read_manifest(folder)
    if manifest is None:
        report.problems.append(f"{folder} is not a prepared dataset: run `synthshot datasets prepare {source.name} --root {root}`")
        return report
    prepared = manifest.get("protocols", {})
    protocols = [source.protocol(protocol).name] if protocol else list(prepared)
    for proto in protocols:
        if proto not in prepared:
            report.problems.append(f"protocol {proto!r} was not prepared in {folder}")
            continue
        split_path = folder / prepared[proto]["split_file"]
        if not split_path.is_file():
            report.problems.append(f"{split_path} is missing")
            continue
        if hash_file(split_path)[0] != prepared[proto]["sha256"]:
            report.problems.append(f"{split_path} changed since prepare (its sha256 differs from the manifest's)")
        try:
            split = read_split_rows(split_path)
            report.counts[proto] = check_split(folder, split, source.protocols[proto], info, str(split_path))
        except MissingImagesError as exc:
            shown = "\n    ".join(exc.missing[:20])
            more = f"\n    ... and {len(exc.missing) - 20} more" if len(exc.missing) > 20 else ""
            report.problems.append(f"{len(exc.missing)} image(s) of the {proto} split are missing:\n    {shown}{more}")
            continue
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        names = [c.name for c in info.classes]
        wrong = sorted({row[1] for s in SPLITS for row in split[s] if row[2] != names[row[1]]})
        if wrong:
            report.problems.append(
                f"{split_path}: {len(wrong)} labels carry another name than the registry's (e.g. label {wrong[0]})"
            )
        if decode:
            report.problems += _undecodable(folder, split)
    for filename, record in manifest.get("files", {}).items():
        placed = record.get("placed")
        if placed:
            path = folder / placed
            if not path.is_file():
                report.problems.append(f"{path} is missing")
            elif hash_file(path)[0] != record["sha256"]:
                report.problems.append(f"{path}: sha256 differs from the one recorded at prepare time")
        elif archives and record.get("sha256") and not str(record.get("source", "")).startswith("user file"):
            cached = root / ".cache" / source.name / filename
            if cached.is_file():
                echo(f"  hashing {cached}")
                if hash_file(cached, progress=True, label=filename)[0] != record["sha256"]:
                    report.problems.append(f"{cached}: sha256 differs from the one recorded at prepare time")
            else:
                report.notes.append(f"{filename} is not in {root / '.cache' / source.name} (deleted after prepare?)")
        if record.get("verified") == "unverified":
            report.notes.append(f"{filename} has no pinned checksum; its sha256 at prepare time was {record.get('sha256')}")
    return report


def _undecodable(folder: Path, split: dict[str, list[list]]) -> list[str]:
    from PIL import Image

    bad = []
    for path in sorted({row[0] for rows in split.values() for row in rows}):
        try:
            with Image.open(folder / path) as image:
                image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            bad.append(f"{path}: {type(exc).__name__}")
    return [f"{len(bad)} image(s) cannot be decoded: " + ", ".join(bad[:10])] if bad else []
