"""Image folders on disk: the `root/<class>/<image>` layout, the two peer few-shot layouts, and
decoding images safely.

Peer layouts (the folder returned by `resolve_image_root` holds the class folders):
  - `fewshot_seed`: `root/real_train_fewshot/seed<S>/<class>/` (DataDream, DIPSY), or `root/seed<S>/`
  - `shot_seed`:    `root/shot<K>_seed<S>/<class>/`
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from PIL import Image

from synthshot.errors import DataError
from synthshot.io import quote

logger = logging.getLogger("synthshot.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
LAYOUTS = ("auto", "imagefolder", "fewshot_seed", "shot_seed")
FEWSHOT_FOLDER = "real_train_fewshot"

_SEED_DIR = re.compile(r"seed(\d+)")
_SHOT_SEED_DIR = re.compile(r"shot(\d+)_seed(\d+)")


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def is_image_file(path: Path) -> bool:
    return path.is_file() and not is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not is_hidden(p)), key=lambda p: p.name)


def scan_image_folder(root: Path) -> dict[str, list[Path]]:
    """Map each class folder of `root/<class>/<image>` to its image files, both sorted by name.

    Hidden entries (name starting with `.`) and files without an image extension are ignored.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder {quote(root)} does not exist: check data.root")
    if not root.is_dir():
        raise DataError(
            f"image folder {quote(root)} is not a folder: set data.root to the folder holding <class>/<image> files"
        )
    class_dirs = _visible_dirs(root)
    if not class_dirs:
        raise DataError(f"image folder {quote(root)} has no class folders: put each class's images in root/<class>/")
    images: dict[str, list[Path]] = {}
    for class_dir in class_dirs:
        files = sorted((p for p in class_dir.iterdir() if is_image_file(p)), key=lambda p: p.name)
        if not files:
            raise DataError(
                f"class folder {quote(class_dir)} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add images or remove the folder"
            )
        images[class_dir.name] = files
    return images


def detect_layout(root: Path) -> str:
    """Which layout `root` is in: a peer few-shot layout if its subfolders say so, else imagefolder."""
    root = Path(root)
    if (root / FEWSHOT_FOLDER).is_dir():
        return "fewshot_seed"
    names = [p.name for p in _visible_dirs(root)] if root.is_dir() else []
    if any(_SHOT_SEED_DIR.fullmatch(name) for name in names):
        return "shot_seed"
    if any(_SEED_DIR.fullmatch(name) for name in names):
        return "fewshot_seed"
    return "imagefolder"


def _available(folder: Path, pattern: re.Pattern) -> list[str]:
    names = [p.name for p in _visible_dirs(folder) if pattern.fullmatch(p.name)]
    # Numeric order reads better than text order: seed2 before seed10.
    return sorted(names, key=lambda name: tuple(int(g) for g in pattern.fullmatch(name).groups()))


def resolve_image_root(
    root: Path,
    layout: str = "auto",
    shots: int | None = None,
    seed: int | None = None,
) -> Path:
    """Return the folder that holds the class folders for `layout` (and `shots`/`seed` where the
    layout keeps one folder per seed or per shot count)."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"data layout {layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"image folder {quote(root)} does not exist or is not a folder: check data.root")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "imagefolder":
        return root

    if seed is None:
        raise DataError(f"{root} is in the {layout} layout (one folder per seed): set data.split_seed")
    if layout == "fewshot_seed":
        base = root / FEWSHOT_FOLDER if (root / FEWSHOT_FOLDER).is_dir() else root
        wanted, pattern = base / f"seed{seed}", _SEED_DIR
    else:
        if shots is None:
            raise DataError(f"{root} is in the shot_seed layout (one folder per shot count): set data.shots")
        base = root
        wanted, pattern = base / f"shot{shots}_seed{seed}", _SHOT_SEED_DIR
    if not wanted.is_dir():
        available = _available(base, pattern)
        raise DataError(
            f"{wanted} does not exist; {base} has {', '.join(available) or 'no such folders'}: "
            "choose data.shots / data.split_seed to match one of them"
        )
    return wanted


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB; an unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {quote(path)} does not exist: check the folder or the split file") from None
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{quote(path)} is too large to decode safely ({exc}): shrink it or remove it, "
            "or set data.skip_corrupt=true to skip such files"
        ) from None
    # PIL reports damage as OSError (incl. UnidentifiedImageError, "image file is truncated"),
    # SyntaxError (bad PNG chunks), ValueError or EOFError depending on the format.
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(
            f"{quote(path)} is not a readable image (truncated or corrupt: {exc}): remove it, "
            "or set data.skip_corrupt=true to skip such files"
        ) from None


def is_readable(path: Path, skip_corrupt: bool) -> bool:
    """True if `path` decodes. An unreadable file raises, or with `skip_corrupt` logs a warning
    and returns False."""
    try:
        load_rgb(path)
    except DataError:
        if not skip_corrupt:
            raise
        logger.warning("skipping unreadable image %r (truncated, corrupt or too large; data.skip_corrupt=true)", str(path))
        return False
    return True


def check_images(images: dict[str, list[Path]], skip_corrupt: bool) -> dict[str, list[Path]]:
    """Decode every listed file (slow on a big dataset: call it on a few-shot subset).

    Without `skip_corrupt` the first unreadable file raises; with it, unreadable files are dropped
    with a warning each, and a class left with no image at all is an error.
    """
    checked: dict[str, list[Path]] = {}
    for name, files in images.items():
        good = [path for path in files if is_readable(path, skip_corrupt)]
        if not good:
            raise DataError(f"class {name!r} has no readable image among its {len(files)} files: replace them")
        checked[name] = good
    return checked
