"""LoRA adapters on CLIP's attention projections, through peft, saved in peft's own format.

An adapter folder holds what `PeftModel.save_pretrained` writes (`adapter_config.json`,
`adapter_model.safetensors`) plus `synthshot_adapter.json`: the model it was trained on (its id
and a probe of its weights), the LoRA settings, and the classes and prompts of the classifier.
Before an adapter is applied or resumed, it is checked against the model (every adapted module
exists with the shapes the saved matrices need, and the base weights are those it was trained
on) and, on resume, against the LoRA settings; a mismatch is refused with its reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from synthshot.errors import ModelError
from synthshot.io import atomic_write_json, load_safetensors, parse_json, quote

ADAPTER_INFO = "synthshot_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INFO_FORMAT = "synthshot-lora-1"
TOWER_MODULES = {"vision": "vision_model", "text": "text_model"}
# Values per parameter kept in the probe, and how far a probe may move with the dtype (bf16 ~ 0.4%).
PROBE_VALUES = 4
PROBE_RTOL, PROBE_ATOL = 2e-2, 1e-3


@dataclass(frozen=True)
class LoraSettings:
    """What decides an adapter's shape and meaning (a `FinetuneConfig` subset)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    towers: tuple[str, ...] = ("vision", "text")

    def __post_init__(self) -> None:
        # Order carries no meaning: keep one spelling so that equal settings compare equal.
        object.__setattr__(self, "targets", tuple(sorted(self.targets)))
        object.__setattr__(self, "towers", tuple(sorted(self.towers)))

    @classmethod
    def from_config(cls, settings) -> LoraSettings:
        return cls(
            r=settings.lora_r,
            alpha=float(settings.lora_alpha),
            dropout=float(settings.lora_dropout),
            targets=tuple(settings.lora_targets),
            towers=tuple(settings.towers),
        )

    def to_json(self) -> dict:
        return {**asdict(self), "targets": list(self.targets), "towers": list(self.towers)}

    @classmethod
    def from_json(cls, data: dict) -> LoraSettings:
        return cls(r=int(data["r"]), alpha=float(data["alpha"]), dropout=float(data["dropout"]),
                   targets=tuple(data["targets"]), towers=tuple(data["towers"]))

    def differences(self, other: LoraSettings) -> list[str]:
        """`name=mine vs theirs` for each setting that differs."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{key}={mine[key]} vs {theirs[key]}" for key in mine if mine[key] != theirs[key]]


def target_pattern(settings: LoraSettings) -> str:
    """peft `target_modules` regex: the chosen projections of every attention layer of the chosen towers."""
    unknown = sorted(set(settings.towers) - set(TOWER_MODULES))
    if unknown:
        raise ModelError(f"unknown CLIP towers {unknown}: choose from {sorted(TOWER_MODULES)}")
    towers = "|".join(TOWER_MODULES[t] for t in sorted(settings.towers))
    targets = "|".join(re.escape(t) for t in sorted(settings.targets))
    return rf"({towers})\.encoder\.layers\.\d+\.self_attn\.({targets})"


def add_lora(model, settings: LoraSettings):
    """Freeze `model` (a transformers CLIPModel, logit scale included) and wrap it in a peft model
    whose only trainable parameters are LoRA matrices on the chosen projections."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_pattern(settings),
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"LoRA targets {list(settings.targets)} on {list(settings.towers)} fit no module of "
                         f"the CLIP model ({exc})") from exc
    model.logit_scale.requires_grad_(False)
    return peft_model


def model_probe(model) -> dict[str, list[float]]:
    """The first values of every parameter of a (plain, unadapted) model: a cheap fingerprint
    that tells same-architecture models apart and survives a change of dtype."""
    return {
        name: [float(v) for v in param.detach().flatten()[:PROBE_VALUES].float().cpu()]
        for name, param in model.named_parameters()
    }


def probe_differences(saved: dict[str, list[float]], model) -> list[str]:
    """Parameters whose probe differs between `saved` and `model` (missing ones included)."""
    import numpy as np

    current = model_probe(model)
    different = sorted(set(saved) ^ set(current))
    for name in sorted(set(saved) & set(current)):
        a, b = np.asarray(saved[name]), np.asarray(current[name])
        if a.shape != b.shape or not np.allclose(a, b, rtol=PROBE_RTOL, atol=PROBE_ATOL):
            different.append(name)
    return different


def save_adapter(peft_model, folder: Path, info: dict) -> None:
    """Write the LoRA weights in peft's format (safetensors) and the synthshot sidecar into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    atomic_write_json(folder / ADAPTER_INFO, {"format": INFO_FORMAT, **info})


def adapter_info(model_name: str, base_probe: dict, settings: LoraSettings, classes: list[str],
                 prompts: dict[str, list[str]], **extra) -> dict:
    """The sidecar's content."""
    return {"model": model_name, "model_probe": base_probe, "lora": settings.to_json(),
            "classes": list(classes), "prompts": prompts, **extra}


def read_adapter_info(folder: Path) -> dict:
    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_INFO):
        if not (folder / name).is_file():
            raise ModelError(
                f"{folder} is not a synthshot LoRA adapter ({name} is missing): pass a folder written by "
                "`synthshot finetune` (its adapter/ or a checkpoints/epoch_<n>/ folder)"
            )
    try:
        info = parse_json((folder / ADAPTER_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / ADAPTER_INFO} cannot be read ({exc}): the adapter folder is damaged") from None
    if info.get("format") != INFO_FORMAT:
        raise ModelError(f"{folder / ADAPTER_INFO} has format {info.get('format')!r}, not {INFO_FORMAT!r}: "
                         "it was written by another version of synthshot")
    return info


def check_adapter(folder: Path, model, *, settings: LoraSettings | None = None) -> dict:
    """Refuse an adapter that does not fit `model` (a plain CLIPModel) or, when `settings` is
    given, was trained with other LoRA settings; return its sidecar info."""
    folder = Path(folder)
    info = read_adapter_info(folder)
    saved = LoraSettings.from_json(info["lora"])
    if settings is not None and saved != settings:
        raise ModelError(
            f"{folder} was trained with other LoRA settings ({'; '.join(saved.differences(settings))}; "
            "saved vs asked): use the same finetune.lora_* and towers settings, or a new output folder"
        )
    _check_shapes(folder, model)
    different = probe_differences(info.get("model_probe", {}), model)
    if different:
        raise ModelError(
            f"{folder} was trained on another model ({info.get('model')!r}); {len(different)} parameter(s) of "
            f"the model given differ, e.g. {different[0]}: use the CLIP model the adapter was trained on"
        )
    return info


def _check_shapes(folder: Path, model) -> None:
    """Every saved LoRA matrix names a linear layer of `model` whose sizes it fits."""
    from safetensors import SafetensorError, safe_open

    path = folder / ADAPTER_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as handle:
            # safe_open has keys() but is not iterable.
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{quote(path)} is not a valid safetensors file ({exc}): train the adapter again") from None
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if match is None:
            raise ModelError(f"{folder / ADAPTER_WEIGHTS} holds {key!r}, which is not a LoRA matrix of synthshot's")
        name, which = match.groups()
        module = modules.get(name)
        if module is None or not hasattr(module, "in_features"):
            raise ModelError(f"{folder} adapts {name}, which the CLIP model given does not have: "
                             "use the CLIP model the adapter was trained on")
        expected = module.in_features if which == "A" else module.out_features
        got = shape[1] if which == "A" else shape[0]
        if got != expected:
            raise ModelError(f"{folder} adapts {name} with size {got}, but that layer of the CLIP model given has "
                             f"size {expected}: use the CLIP model the adapter was trained on")


def load_adapter_weights(peft_model, folder: Path, remedy: str = "train the adapter again") -> None:
    """Put the LoRA weights saved in `folder` into a peft model of the same settings."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, load_safetensors(Path(folder) / ADAPTER_WEIGHTS, remedy))
    missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
    if missing:
        raise ModelError(f"{folder} lacks {len(missing)} LoRA matrices of the model, e.g. {missing[0]}")


def apply_adapter(bundle, adapter_dir: Path):
    """A `CLIPBundle` whose model carries the fine-tuned LoRA weights of `adapter_dir`, merged into
    the linear layers (a plain CLIPModel again, as fast as the original). The adapter is checked
    against the model first. `bundle.model` itself is changed (merged in place), not copied."""
    from peft import PeftModel

    from synthshot.models.clip import CLIPBundle

    adapter_dir = Path(adapter_dir)
    check_adapter(adapter_dir, bundle.model)
    try:
        merged = PeftModel.from_pretrained(bundle.model, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"LoRA adapter {adapter_dir} cannot be applied: {exc}") from exc
    merged.eval()
    return CLIPBundle(name=f"{bundle.name}+lora:{adapter_dir}", model=merged, tokenizer=bundle.tokenizer,
                      processor=bundle.processor)
