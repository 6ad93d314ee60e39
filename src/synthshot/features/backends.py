"""CLIP image encoders behind one small interface, chosen by model name.

    transformers  any `CLIPModel` by hub id, alias (ViT-B/32, ViT-B/16, ViT-L/14) or local folder,
                  through `synthshot.models.clip.load_clip`; always available.
    open_clip     names `open_clip:<arch>[/<pretrained>]` (e.g. `open_clip:RN50/openai`) and
                  `hf-hub:<repo>` (e.g. `hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K`); the optional
                  `openclip` extra, used only where it imports (it needs torchvision).

An encoder knows its own preprocessing (`preprocess`, single scale), the constants that multi-scale
crops are normalised with (`spec`: input size, mean, std) and a `fingerprint`: what a feature
cache records to tell whether it was made by this very encoder. Where the model has a text tower
(`has_text_tower`), `text_classifier` builds the zero-shot classifier of class prompts with it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from synthshot.errors import ConfigError, ModelError
from synthshot.features.preprocess import (
    PixelSpec,
    multiscale_pixels,
    processor_fingerprint,
    processor_pixels,
    spec_from_processor,
)
from synthshot.models.hub import HubOptions, is_local, loading

logger = logging.getLogger("synthshot.features")

BACKENDS = ("auto", "transformers", "open_clip")
OPEN_CLIP_PREFIX = "open_clip:"
HF_HUB_PREFIX = "hf-hub:"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Elements of each weight tensor that the weights digest reads (strided over the whole tensor).
DIGEST_SAMPLE = 8192


def resolve_backend(name: str, backend: str = "auto") -> str:
    """`auto` picks open_clip for `open_clip:` and `hf-hub:` names, transformers for the rest."""
    if backend not in BACKENDS:
        raise ConfigError(f"features.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    is_open_clip_name = name.startswith((OPEN_CLIP_PREFIX, HF_HUB_PREFIX))
    if backend == "auto":
        return "open_clip" if is_open_clip_name else "transformers"
    if backend == "transformers" and is_open_clip_name:
        raise ConfigError(
            f"model {name!r} is an open_clip name but features.backend=transformers: "
            "set features.backend=auto or open_clip, or give a transformers CLIP id or folder"
        )
    return backend


def weights_digest(tensors: Iterable[tuple[str, Tensor]], sample: int = DIGEST_SAMPLE) -> str:
    """sha256 over every tensor's name, shape and a strided sample of its values (in fp32).

    Reading a sample instead of every byte keeps this to milliseconds for ViT-L/14 (on a GPU too),
    and still sees any fine-tuning: a training step or a merged LoRA delta changes values all over a
    tensor, not at a few positions between the samples.
    """
    digest = hashlib.sha256()
    for name, tensor in tensors:
        flat = tensor.detach().reshape(-1)
        step = max(1, math.ceil(flat.numel() / sample))
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(flat[::step].to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """sha256 over the relative names and bytes of every file in a folder (an adapter: small)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _jsonable(value):
    """The same dict after a JSON round trip (tuples -> lists), so it compares equal to a sidecar."""
    return json.loads(json.dumps(value))


class ImageEncoder(ABC):
    """A CLIP image tower: preprocessing, crop constants, projected embeddings."""

    backend: str

    def __init__(self, name: str, spec: PixelSpec, dim: int, device, dtype, adapter: dict | None = None):
        self.name = name
        self.spec = spec
        self.dim = dim
        self.device = torch.device(device)
        self.dtype = dtype
        self.adapter = adapter

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the encoder's input."""
        return self.spec.input_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """Single scale: the encoder's own preprocessing, [N, 3, H, W]."""

    def crops(self, image: Image.Image, scales: Sequence[int], seed: int) -> Tensor:
        """Multi-scale: one crop per scale, resized to the input size and normalised, [S, 3, H, W]."""
        return multiscale_pixels(image, self.spec, scales, seed)

    @abstractmethod
    def encode(self, pixel_values: Tensor) -> Tensor:
        """Projected image embeddings [N, D] (not normalised)."""

    @property
    def has_text_tower(self) -> bool:
        """Whether this model has the text tower (and tokenizer) that `text_classifier` needs."""
        return False

    def text_classifier(self, class_prompts: dict[str, list[str]], batch_size: int = 256) -> Tensor:
        """The zero-shot text classifier: L2-normalised text features [C, D] in fp32 on the encoder's
        device, one row per class of `class_prompts` (class -> prompts, in label order), each row the
        mean of the class's normalised prompt features, normalised again. `batch_size` bounds how many
        prompts run through the text tower at once."""
        if not self.has_text_tower:
            raise ConfigError(
                f"the text classifiers need CLIP's text tower, which model {self.name!r} ({self.backend} backend) "
                "does not have here: set classifier.methods=[prototypes]"
            )
        from synthshot.classify.text import class_text_features, prompt_owners

        texts, owner = prompt_owners(class_prompts)
        step = max(1, int(batch_size))
        with torch.no_grad():
            features = torch.cat([self._encode_texts(texts[i : i + step]) for i in range(0, len(texts), step)])
            return class_text_features(features, owner, len(class_prompts)).to(self.device)

    def _encode_texts(self, texts: list[str]) -> Tensor:
        """Projected text features [P, D] of prompts (not normalised), for `text_classifier`."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower")

    @abstractmethod
    def _weights(self) -> Iterable[tuple[str, Tensor]]:
        """The image tower's named tensors (for the weights digest)."""

    @abstractmethod
    def _preprocessing(self) -> dict:
        """What decides the single-scale pixels."""

    @cached_property
    def fingerprint(self) -> dict:
        """What identifies this encoder's features: backend, model, weights digest, adapter,
        dtype, single-scale preprocessing and crop constants. Stable across runs and devices."""
        name = str(Path(self.name).expanduser().resolve()) if is_local(self.name) else self.name
        return _jsonable(
            {
                "backend": self.backend,
                "model": name,
                "weights_sha256": weights_digest(self._weights()),
                "adapter": self.adapter,
                "dtype": str(self.dtype).removeprefix("torch."),
                "dim": self.dim,
                "preprocessing": self._preprocessing(),
                "crops": self.spec.fingerprint(),
            }
        )


class TransformersImageEncoder(ImageEncoder):
    """The image tower of a transformers `CLIPModel` with its `CLIPImageProcessor`."""

    backend = "transformers"

    def __init__(self, bundle, adapter: dict | None = None, name: str | None = None):
        model = bundle.model
        size = model.config.vision_config.image_size
        parameter = next(model.parameters())
        super().__init__(
            name or bundle.name,
            spec_from_processor(bundle.processor, (size, size)),
            int(model.config.projection_dim),
            parameter.device,
            parameter.dtype,
            adapter,
        )
        self.model = model
        self.processor = bundle.processor
        self.clip = bundle  # the whole CLIP (text tower and tokenizer too), for the text classifiers

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        return processor_pixels(self.processor, images)

    @torch.inference_mode()
    def encode(self, pixel_values: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
        # transformers 5 returns the vision output with the projected embedding as pooler_output.
        return out if isinstance(out, Tensor) else out.pooler_output

    @property
    def has_text_tower(self) -> bool:
        return True

    def text_classifier(self, class_prompts: dict[str, list[str]], batch_size: int = 256) -> Tensor:
        # The bundle's model: with a LoRA adapter applied, the adapted text tower.
        from synthshot.classify.text import text_classifier_weights

        return text_classifier_weights(self.clip, class_prompts, device=self.device, batch_size=batch_size)

    def _weights(self) -> Iterable[tuple[str, Tensor]]:
        yield from self.model.vision_model.state_dict().items()
        yield from self.model.visual_projection.state_dict().items()

    def _preprocessing(self) -> dict:
        return {"processor": processor_fingerprint(self.processor)}


class OpenClipImageEncoder(ImageEncoder):
    """The image tower of an open_clip model with its own (torchvision) transform; its text tower
    too, for the text classifiers, when the model has one (`encode_text`) and a tokenizer is given
    (open_clip's: a callable, list of prompts -> token ids [P, L])."""

    backend = "open_clip"

    def __init__(self, name: str, model, transform, tokenizer=None):
        visual = model.visual
        size = visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
        std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
        parameter = next(model.parameters())
        dim = getattr(visual, "output_dim", None)
        if dim is None:  # some timm towers do not say: ask the model
            with torch.inference_mode():
                dim = model.encode_image(
                    torch.zeros(1, 3, *size, device=parameter.device, dtype=parameter.dtype)
                ).shape[-1]
        super().__init__(name, PixelSpec(size, mean, std), int(dim), parameter.device, parameter.dtype)
        self.model = model
        self.transform = transform
        self.tokenizer = tokenizer

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        return torch.stack([self.transform(image.convert("RGB")) for image in images])

    @torch.inference_mode()
    def encode(self, pixel_values: Tensor) -> Tensor:
        return self.model.encode_image(pixel_values.to(self.device, self.dtype))

    @property
    def has_text_tower(self) -> bool:
        return self.tokenizer is not None and callable(getattr(self.model, "encode_text", None))

    def text_classifier(self, class_prompts: dict[str, list[str]], batch_size: int = 256) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return super().text_classifier(class_prompts, batch_size)
        finally:
            self.model.train(was_training)

    def _encode_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts)
        return self.model.encode_text(tokens.to(self.device))

    def _weights(self) -> Iterable[tuple[str, Tensor]]:
        yield from self.model.visual.state_dict().items()

    def _preprocessing(self) -> dict:
        # torchvision's Compose repr lists every step with its parameters.
        return {"transform": repr(self.transform)}


def parse_open_clip_name(name: str) -> tuple[str, str | None]:
    """`open_clip:RN50/openai` -> ("RN50", "openai"); `open_clip:ViT-B-32` -> ("ViT-B-32", None);
    `hf-hub:laion/X` -> ("hf-hub:laion/X", None). The pretrained part may be a tag or a checkpoint file."""
    spec = name.removeprefix(OPEN_CLIP_PREFIX)
    if spec.startswith(HF_HUB_PREFIX):
        return spec, None
    arch, _, pretrained = spec.partition("/")
    if not arch:
        raise ConfigError(f"open_clip model name {name!r} has no architecture: write open_clip:<arch>[/<pretrained>]")
    return arch, pretrained or None


def load_open_clip(name: str, options: HubOptions, *, device: str = "cpu", dtype=None) -> OpenClipImageEncoder:
    try:
        import open_clip
    except ImportError as exc:
        raise ModelError(
            f"model {name!r} needs open_clip, which does not import here ({exc}): "
            "pip install 'synthshot[openclip]' (it needs torchvision), or use a transformers CLIP model"
        ) from None
    arch, pretrained = parse_open_clip_name(name)
    if pretrained is None and not arch.startswith(HF_HUB_PREFIX):
        logger.warning("open_clip model %s has no pretrained tag: its weights are random", arch)
    cache_dir = str(options.cache_dir) if options.cache_dir else None
    with loading("open_clip model", name, options, path_check=False):
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device, cache_dir=cache_dir
            )
        except RuntimeError as exc:  # open_clip's unknown model / pretrained tag
            raise ModelError(f"open_clip model {name!r} cannot be created: {str(exc).splitlines()[0]}") from None
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return OpenClipImageEncoder(name, model, transform, _open_clip_tokenizer(open_clip, name, arch, model, cache_dir))


def _open_clip_tokenizer(open_clip, name: str, arch: str, model, cache_dir: str | None):
    """open_clip's tokenizer of a model with a text tower; None (image features only) without one."""
    if not callable(getattr(model, "encode_text", None)):
        return None
    # open_clip < 2.32 has no cache_dir (its **kwargs go to the tokenizer's constructor).
    takes_cache_dir = "cache_dir" in inspect.signature(open_clip.get_tokenizer).parameters
    try:
        return open_clip.get_tokenizer(arch, **({"cache_dir": cache_dir} if cache_dir and takes_cache_dir else {}))
    except Exception as exc:  # an unknown tokenizer, or one that cannot be fetched offline
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        logger.warning("open_clip model %s: no tokenizer (%s); only its image features can be used", name, reason)
        return None


def _apply_adapter(bundle, adapter: Path):
    adapter = Path(adapter).expanduser()
    if not adapter.is_dir():
        raise ModelError(f"LoRA adapter folder {adapter} does not exist: check features.adapter")
    try:
        from synthshot.classify.lora import apply_adapter
    except ImportError as exc:
        raise ModelError(f"LoRA adapters cannot be applied in this install ({exc})") from None
    bundle = apply_adapter(bundle, adapter)
    return bundle, {"path": str(adapter.resolve()), "sha256": folder_digest(adapter)}


def load_image_encoder(
    name: str,
    hub_options: HubOptions,
    *,
    backend: str = "auto",
    device: str = "cpu",
    dtype=None,
    adapter: Path | None = None,
) -> ImageEncoder:
    """An image encoder for a model name: hub id, alias, folder, `open_clip:...` or `hf-hub:...`.

    `adapter`: a LoRA adapter folder (saved by `synthshot finetune`) applied to a transformers model.
    """
    kind = resolve_backend(name, backend)
    if kind == "open_clip":
        if adapter is not None:
            raise ConfigError(f"features.adapter applies to transformers CLIP models only, not to {name!r}")
        return load_open_clip(name, hub_options, device=device, dtype=dtype)
    from synthshot.models.clip import load_clip

    bundle = load_clip(name, hub_options, device=device, dtype=dtype)
    model_name, adapter_record = bundle.name, None
    if adapter is not None:
        bundle, adapter_record = _apply_adapter(bundle, adapter)
    # The fingerprint names the base model; the adapter is recorded beside it (path + file digest).
    return TransformersImageEncoder(bundle, adapter=adapter_record, name=model_name)
