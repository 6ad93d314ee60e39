"""Typed configuration: YAML files mapped onto pydantic models, with dotted command-line overrides.

Every stage reads its own section (`data`, `models`, `similarity`, `generation`); `RunConfig`
holds them all plus what they share (output folder, seed, device, offline mode). Unknown keys
and values of the wrong type are errors that name the key and, for a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthshot.errors import ConfigError

Precision = Literal["fp32", "fp16", "bf16"]


class Section(BaseModel):
    """A config section: unknown keys are errors, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    """Which models to load. Each is a hub id or a local folder in the hub's layout."""

    tiny_kit: Path | None = Field(
        None,
        description="Build the offline tiny model kit in this folder (if missing) and use its "
        "models instead of the ids below.",
    )
    diffusion: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Stable Diffusion pipeline (diffusers layout).",
    )
    ip_adapter: str = Field("h94/IP-Adapter", description="Repository or folder holding the IP-Adapter weights.")
    ip_adapter_subfolder: str = "models"
    ip_adapter_weights: list[str] = Field(
        default_factory=lambda: ["ip-adapter-plus_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"],
        description="Adapter weight files (safetensors): positive adapter first, negative second.",
    )
    image_encoder: str | None = Field(
        None,
        description="IP-Adapter image encoder as a hub id or folder; default: `image_encoder_subfolder` "
        "of the `ip_adapter` repository.",
    )
    image_encoder_subfolder: str = "models/image_encoder"
    clip: str = Field("openai/clip-vit-base-patch16", description="CLIP model for similarity and classification.")
    revision: str | None = None
    cache_dir: Path | None = None


class DemoDataConfig(Section):
    """A small dataset of drawn shapes that synthshot makes itself, for the offline quickstart."""

    classes: int = Field(4, ge=2, le=8)
    images_per_class: int = Field(8, ge=1)
    size: int = Field(64, ge=16)
    seed: int = 0


class DataConfig(Section):
    """Where the few labelled images come from and how the few-shot split is drawn."""

    root: Path | None = Field(None, description="Image folder (root/<class>/<image>) or a peer layout.")
    dataset: str | None = Field(None, description="Registry name (class names for prompts, prompt template).")
    layout: Literal["auto", "imagefolder", "fewshot_seed", "shot_seed"] = "auto"
    shots: int = Field(16, ge=1)
    split_seed: int = 1
    allow_fewer: bool = Field(False, description="Allow classes with fewer than `shots` images.")
    skip_corrupt: bool = Field(False, description="Skip unreadable images with a warning instead of failing.")
    demo: DemoDataConfig | None = Field(None, description="Draw a demo dataset into <output_dir>/demo-data.")


class SimilarityConfig(Section):
    """Class similarity from CLIP image embeddings and the negative-class distribution (DIPSY)."""

    method: Literal["class_mean", "pairwise_mean"] = "class_mean"
    temperature: float = Field(0.4, gt=0)
    sampling: Literal["similarity", "uniform"] = "similarity"
    batch_size: int = Field(32, ge=1)


class GenerationConfig(Section):
    """Synthetic image generation with dual IP-Adapter guidance (DIPSY Eq. 9)."""

    mode: Literal["dual", "single", "text"] = "dual"
    images_per_class: int = Field(200, ge=1)
    w_text: float = Field(7.5, ge=0)
    w_pos: float = Field(6.0, ge=0)
    w_neg: float = Field(6.0, ge=0)
    ip_adapter_scale: float = Field(0.6, ge=0)
    steps: int = Field(50, ge=1)
    scheduler: Literal["dpm", "ddim", "euler"] = "dpm"
    height: int = Field(512, ge=8)
    width: int = Field(512, ge=8)
    precision: Precision = "fp16"
    attention: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False
    batch_size: int = Field(4, ge=1, description="Images per denoising batch.")
    template: str | None = Field(None, description="Prompt template with `{}`; default: the dataset's.")
    empty_text: bool = Field(False, description="Ablation: an empty prompt instead of the class prompt.")
    augment: bool = True
    image_format: Literal["png", "jpeg"] = "png"

    @field_validator("template")
    @classmethod
    def _template_has_slot(cls, value: str | None) -> str | None:
        if value is not None and "{}" not in value:
            raise ValueError(f"template {value!r} has no '{{}}' where the class name goes")
        return value


STAGES = ("data", "similarity", "generate")


class RunConfig(Section):
    """A whole experiment: shared settings plus one section per stage."""

    output_dir: Path = Path("runs/default")
    seed: int = 0
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    offline: bool = Field(False, description="Never touch the network (sets HF_HUB_OFFLINE).")
    stages: list[Literal["data", "similarity", "generate"]] = Field(default_factory=lambda: list(STAGES))
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `a.b.c=value` override; the value is read as YAML (`3`, `true`, `[1, 2]`, `text`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. generation.steps=20)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return [part.strip() for part in key.split(".")], value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or start from the defaults), apply `key=value` overrides, validate."""
    tree = read_yaml(path) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return validate_config(tree, RunConfig, source=str(path) if path else "config")


def validate_config(tree: dict, model: type[BaseModel], source: str = "config") -> Any:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, model)}") from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first problem: the dotted key, what is wrong, and the closest valid key."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        valid = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else f"valid keys here: {', '.join(valid)}"
        return f"unknown key {key}: {hint}"
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"key {key}: {error['msg'].lower()}{got_text}"


def _field_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The valid keys of the section at `loc` (a list of field names from the root model)."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = _section_type(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _section_type(annotation: Any) -> Any:
    """The BaseModel inside an annotation such as `DemoDataConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, written next to every output."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_resolved_config(config: BaseModel, folder: str | Path) -> Path:
    from synthshot.io import atomic_write_text

    path = Path(folder) / "config.resolved.yaml"
    atomic_write_text(path, dump_config(config))
    return path
