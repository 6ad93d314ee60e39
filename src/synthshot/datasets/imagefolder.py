"""ImageFolder views of a prepared split: ``imagefolder/<protocol>/<split>/<NNN>_<slug>/<file>``.

``torchvision.datasets.ImageFolder`` numbers classes by sorted folder name; the zero-padded label
prefix makes that order equal to the split's label order, so the labels an ImageFolder reader
assigns are the split's labels. The readable class names stay in ``synthshot/classnames.json``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from synthshot.errors import DataError
from synthshot.io import slugify

MODES = ("none", "symlink", "hardlink", "copy")


def class_folder(label: int, name: str, num_classes: int) -> str:
    width = max(3, len(str(num_classes - 1)))
    return f"{label:0{width}d}_{slugify(name)}"


def materialise(tree: Path, protocol: str, split: dict[str, list[list]], num_classes: int, mode: str) -> Path:
    """Build the view in a staging folder, then swap it in; return its folder."""
    if mode not in MODES or mode == "none":
        raise DataError(f"--imagefolder {mode!r} is not one of symlink, hardlink, copy")
    tree = tree.absolute()
    target = tree / "imagefolder" / protocol
    staging = tree / "imagefolder" / f".{protocol}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for name, rows in split.items():
            used: set[Path] = set()
            for path, label, classname in rows:
                source = tree / path
                folder = staging / name / class_folder(label, classname, num_classes)
                dest = folder / PurePosixPath(path).name
                if dest in used:  # same file name in two source folders of one class
                    dest = folder / path.replace("/", "__")
                used.add(dest)
                folder.mkdir(parents=True, exist_ok=True)
                if mode == "symlink":
                    os.symlink(os.path.relpath(source, folder), dest)
                elif mode == "hardlink":
                    try:
                        os.link(source, dest)
                    except OSError as exc:
                        raise DataError(
                            f"cannot hard-link {source} into {folder} ({exc.strerror}); use --imagefolder symlink or copy"
                        ) from None
                else:
                    shutil.copy2(source, dest)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
