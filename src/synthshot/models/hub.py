"""Where models come from: a local folder or the Hugging Face hub, with offline mode and one-line
errors that say how to provide a model that is missing."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from synthshot.errors import ModelError

logger = logging.getLogger("synthshot.models")


def set_offline(offline: bool) -> None:
    """Make every hub client in this process stay off the network.

    huggingface_hub reads these variables when it is first imported, so this runs before any model
    library is imported (the CLI calls it first); loaders also pass `local_files_only=True`.
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def is_offline(offline: bool = False) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubOptions:
    """What every `from_pretrained` call of a run shares."""

    offline: bool = False
    revision: str | None = None
    cache_dir: Path | None = None

    def kwargs(self, *, local: bool = False) -> dict:
        out: dict = {"local_files_only": is_offline(self.offline)}
        # A revision or cache means nothing for a local folder.
        if not local:
            if self.revision:
                out["revision"] = self.revision
            if self.cache_dir:
                out["cache_dir"] = str(self.cache_dir)
        return out


def is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def looks_like_path(name: str) -> bool:
    """A name that can only mean a folder on this machine, never a hub id (`org/name`)."""
    return (Path(name).expanduser().is_absolute() or name.startswith((".", "~")) or "\\" in name
            or name.count("/") > 1)


def check_local_path(what: str, name: str) -> None:
    """A model given as a path that does not exist: say so, instead of trying the hub."""
    if looks_like_path(name) and not is_local(name):
        raise ModelError(f"{what} folder {name!r} does not exist: check the path (a hub id has the form org/name)")


@contextlib.contextmanager
def loading(what: str, name: str, options: HubOptions, *, path_check: bool = True) -> Iterator[None]:
    """Turn the many exceptions of a failed `from_pretrained` into one ModelError line (`name` is
    what was passed to it; `path_check=False` when it is a label, not a hub id or folder)."""
    if path_check:
        check_local_path(what, name)
    try:
        yield
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if is_local(name):
            raise ModelError(f"{what} folder {name} cannot be loaded: {reason}") from exc
        if is_offline(options.offline):
            raise ModelError(
                f"{what} {name!r} is not available offline: pass a local folder in the hub layout "
                f"(e.g. one written by `synthshot models make-tiny` or `huggingface-cli download {name}`), "
                "or allow network access (drop --offline / HF_HUB_OFFLINE)"
            ) from exc
        raise ModelError(
            f"{what} {name!r} could not be loaded from the hub ({reason}): check the id and your network, "
            "or pass a local folder"
        ) from exc


def resolve_file(repo: str, filename: str, subfolder: str | None, options: HubOptions) -> Path:
    """The local path of one file of a repository (downloaded unless offline) or of a local folder."""
    check_local_path("model", repo)
    if is_local(repo):
        path = Path(repo).expanduser() / (subfolder or "") / filename
        if not path.is_file():
            raise ModelError(f"file {path} does not exist: check ip_adapter / its subfolder and weight names")
        return path
    from huggingface_hub import hf_hub_download

    with loading("file", f"{repo}/{subfolder + '/' if subfolder else ''}{filename}", options, path_check=False):
        return Path(hf_hub_download(repo, filename, subfolder=subfolder or None, **options.kwargs()))


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {device!r} was asked for but CUDA is not available here: use device=cpu or auto")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(precision: str, device: str):
    """torch dtype for a precision name; half precision falls back to fp32 on CPU, where it is slow
    or unsupported for many kernels."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ModelError(f"precision {precision!r} is not one of {', '.join(dtypes)}")
    if device == "cpu" and precision != "fp32":
        logger.warning("precision %s is not used on the CPU: running in fp32", precision)
        return torch.float32
    return dtypes[precision]
