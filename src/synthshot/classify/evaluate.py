"""The training-free side of synthshot, from features to `results.json` (LGCLIP and baselines).

    features    CLIP image features of the synthetic set, the few-shot images and the test (and
                validation) images, cached per file       -> features/<set>-<model>[-ms].safetensors
    prototypes  per-class means of the synthetic features -> prototypes/prototypes.safetensors
    evaluate    prototypes, text zero-shot, their mixture and the Tip-Adapter cache on the test
                split; every choice made on validation data only -> evaluate/results.json

Each function takes the resolved `RunConfig`, so `synthshot run` and the CLI verbs share them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from synthshot.config import RunConfig, write_resolved_config
from synthshot.data.labelled import LabelledImages
from synthshot.errors import ConfigError, DataError
from synthshot.io import atomic_write_json, slugify
from synthshot.stages import (
    DEFAULT_TEMPLATE,
    FewShotData,
    data_root,
    dataset_name,
    hub_options,
    prepare_data,
    resolve_eval_source,
    resolve_models,
    synthetic_set,
)

PROTOTYPES_FILE = "prototypes.safetensors"
# CLIP's own ensemble for datasets the registry does not know (a subset of openai/CLIP's ImageNet list).
GENERIC_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a rendering of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
)
COMBINE_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class EvaluationData:
    """Everything one evaluation needs, gathered once: classes and the labelled image sets."""

    data: FewShotData
    classes: list[str]
    test: LabelledImages
    val: LabelledImages | None


def features_dir(config: RunConfig) -> Path:
    return config.output_dir / "features"


def load_encoder(config: RunConfig):
    """The CLIP image encoder of `models.clip` (with `features.adapter`'s LoRA when given)."""
    from synthshot.features.backends import load_image_encoder
    from synthshot.models.hub import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return load_image_encoder(
        config.models.clip,
        hub_options(config),
        backend=config.features.backend,
        device=device,
        dtype=resolve_dtype(config.features.precision, device),
        adapter=config.features.adapter,
    )


def cache_name(config: RunConfig, set_name: str) -> str:
    """One cache file per image set, model, adapter and scale setting, so a sweep over backbones
    never makes two models share (and recompute) one cache."""
    parts = [set_name, slugify(config.models.clip)[:60]]
    if config.features.adapter is not None:
        parts.append("lora-" + slugify(Path(config.features.adapter).name))
    if config.features.multiscale:
        parts.append("ms" + "-".join(str(s) for s in config.features.scales) + f"-seed{config.features.seed}")
    return "_".join(parts)


def image_features(config: RunConfig, encoder, images: LabelledImages, set_name: str, *, echo=print) -> torch.Tensor:
    """[N, D] L2-normalised features of `images`, from the cache where it is up to date."""
    from synthshot.features.extract import extract_features

    feats = config.features
    path = features_dir(config) / f"{cache_name(config, set_name)}.safetensors"
    result = extract_features(
        encoder,
        images.files,
        multiscale=feats.multiscale,
        scales=feats.scales,
        seed=feats.seed,
        batch_size=feats.batch_size,
        cache=path,
        progress=False,
    )
    echo(f"  {set_name}: {len(images)} image(s) -> {path}")
    return result.features


def gather_data(config: RunConfig, *, need_test: bool = True) -> EvaluationData:
    data = prepare_data(config, echo=lambda *_: None)
    classes = list(data.split)
    settings = config.classifier
    root = data_root(config) if (config.data.root is not None or config.data.demo is not None) else None

    def load(source):
        from synthshot.data.labelled import load_labelled_images

        source = resolve_eval_source(config, source)
        return load_labelled_images(
            source, classes, data.class_names, data_root=root, exclude=data.files(), seed=config.seed
        )

    test = load(settings.test) if need_test else None
    val = load(settings.val) if settings.val is not None else None
    return EvaluationData(data=data, classes=classes, test=test, val=val)


# ------------------------------------------------------------------------------------ features
def compute_features(config: RunConfig, *, echo=print) -> dict[str, torch.Tensor]:
    """Extract (or reuse) the features of every image set the run has."""
    config = resolve_models(config)
    gathered = gather_data(config)
    encoder = load_encoder(config)
    mode = "multi-scale " + str(config.features.scales) if config.features.multiscale else "single-scale"
    echo(f"features ({mode}, {config.models.clip}):")
    sets: dict[str, LabelledImages] = {"test": gathered.test}
    if gathered.val is not None:
        sets["val"] = gathered.val
    if gathered.data.split_file is not None:
        sets["fewshot"] = LabelledImages(
            files=[p for files in gathered.data.split.values() for p in files],
            labels=[i for i, files in enumerate(gathered.data.split.values()) for _ in files],
            classes=gathered.classes,
            source=str(gathered.data.split_file),
        )
    if _has_synthetic(config):
        sets["synthetic"] = synthetic_set(config, gathered.classes, gathered.data.class_names)
    out = {name: image_features(config, encoder, images, name, echo=echo) for name, images in sets.items()}
    write_resolved_config(config, features_dir(config))
    return out


def _has_synthetic(config: RunConfig) -> bool:
    from synthshot.generation.runner import MANIFEST
    from synthshot.stages import synthetic_root

    return (synthetic_root(config) / MANIFEST).is_file()


# ---------------------------------------------------------------------------------- prototypes
def build_prototypes(config: RunConfig, *, encoder=None, gathered: EvaluationData | None = None, echo=print):
    """Per-class means of the synthetic features, saved with their class list."""
    from safetensors.torch import save

    from synthshot.classify.prototypes import class_prototypes
    from synthshot.io import atomic_write_bytes

    config = resolve_models(config)
    gathered = gathered or gather_data(config, need_test=False)
    encoder = encoder or load_encoder(config)
    synthetic = synthetic_set(config, gathered.classes, gathered.data.class_names)
    features = image_features(config, encoder, synthetic, "synthetic", echo=echo)
    prototypes = class_prototypes(features, synthetic.labels, gathered.classes)

    folder = config.output_dir / "prototypes"
    atomic_write_bytes(folder / PROTOTYPES_FILE, save({"prototypes": prototypes.contiguous()}))
    counts = torch.bincount(torch.tensor(synthetic.labels), minlength=len(gathered.classes)).tolist()
    atomic_write_json(
        folder / "prototypes.json",
        {
            "classes": gathered.classes,
            "images_per_class": dict(zip(gathered.classes, counts)),
            "model": config.models.clip,
            "adapter": str(config.features.adapter) if config.features.adapter else None,
            "multiscale": config.features.multiscale,
            "scales": config.features.scales if config.features.multiscale else None,
            "score": config.classifier.score,
        },
    )
    write_resolved_config(config, folder)
    echo(f"prototypes: {len(gathered.classes)} classes from {len(synthetic)} synthetic image(s) -> {folder}")
    return prototypes, features, synthetic


def load_prototypes(folder: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read prototypes saved by `build_prototypes` (to classify new images with them)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        info = json.loads((folder / "prototypes.json").read_text(encoding="utf-8"))
        tensor = load_file(str(folder / PROTOTYPES_FILE))["prototypes"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder} holds no readable prototypes ({exc}): run `synthshot prototypes`") from None
    if tensor.shape[0] != len(info.get("classes", [])):
        raise DataError(f"{folder}: {tensor.shape[0]} prototypes but {len(info.get('classes', []))} classes: rebuild them")
    return tensor, info["classes"]


# ------------------------------------------------------------------------------------ evaluate
def class_text_prompts(config: RunConfig, class_names: dict[str, str]) -> dict[str, list[str]]:
    """The text prompts of each class: the dataset's first zero-shot template, or its ensemble."""
    if config.data.dataset is not None:
        from synthshot.data.registry import get_dataset

        templates = list(get_dataset(config.data.dataset).zeroshot_templates)
    else:
        templates = [DEFAULT_TEMPLATE.lower() + "."] + [t for t in GENERIC_TEMPLATES if t != "a photo of a {}."]
    if config.classifier.text_templates == "single":
        templates = templates[:1]
    return {key: [t.format(name) for t in templates] for key, name in class_names.items()}


def evaluate(config: RunConfig, *, echo=print) -> dict:
    """Score every configured training-free method on the test split; write evaluate/results.json."""
    from synthshot.classify.metrics import classification_metrics
    from synthshot.classify.prototypes import prototype_logits
    from synthshot.classify.tip_adapter import (
        DEFAULT_ALPHA,
        DEFAULT_BETA,
        search_tip_parameters,
        tip_adapter_logits,
    )
    from synthshot.classify.zeroshot import combined_logits, text_logits
    from synthshot.results import make_results, write_results

    # 1. Data and encoder
    config = resolve_models(config)
    settings = config.classifier
    methods = list(dict.fromkeys(settings.methods))
    if not methods:
        raise ConfigError("classifier.methods is empty: name at least one of prototypes, text, combined, tip_adapter")
    gathered = gather_data(config)
    encoder = load_encoder(config)
    echo(f"evaluate: {len(gathered.test)} test image(s) from {gathered.test.source}")

    # 2. Features of the test (and validation) images
    test_feats = image_features(config, encoder, gathered.test, "test", echo=echo)
    val_feats = image_features(config, encoder, gathered.val, "val", echo=echo) if gathered.val else None
    val_labels = torch.tensor(gathered.val.labels) if gathered.val else None

    # 3. What the methods are built from: synthetic prototypes and keys, class text features
    needs_images = {"prototypes", "combined", "tip_adapter"} & set(methods)
    needs_text = {"text", "combined", "tip_adapter"} & set(methods)
    prototypes = keys = key_labels = text_weights = None
    if needs_images:
        prototypes, keys, synthetic = build_prototypes(config, encoder=encoder, gathered=gathered, echo=echo)
        key_labels = torch.tensor(synthetic.labels)
    if needs_text:
        text_weights = _text_weights(config, encoder, gathered.data.class_names, gathered.classes)

    # 4. Each method's logits on a feature matrix, hyper-parameters chosen on validation only
    def image_scores(feats):
        return prototype_logits(feats, prototypes, settings.score)

    entries: list[dict] = []
    for method in methods:
        params: dict = {}
        selected_on = None
        if method == "prototypes":
            params = {"score": settings.score}
            score = image_scores
        elif method == "text":
            params = {"templates": settings.text_templates}
            score = lambda feats: text_logits(feats, text_weights)
        elif method == "combined":
            weight = settings.combine_weight
            if val_feats is not None:
                weight = _best_on_val(
                    COMBINE_GRID,
                    lambda w: combined_logits(image_scores(val_feats), text_logits(val_feats, text_weights), w),
                    val_labels,
                )
                selected_on = "val"
            params = {"weight": weight, "score": settings.score}
            score = lambda feats, w=weight: combined_logits(image_scores(feats), text_logits(feats, text_weights), w)
        else:  # tip_adapter
            alpha, beta = DEFAULT_ALPHA, DEFAULT_BETA
            if val_feats is not None:
                found = search_tip_parameters(
                    val_feats, val_labels, keys, key_labels, text_weights, settings.tip_alpha, settings.tip_beta
                )
                alpha, beta, selected_on = found.alpha, found.beta, "val"
            params = {"alpha": alpha, "beta": beta}
            score = lambda feats, a=alpha, b=beta: tip_adapter_logits(feats, keys, key_labels, text_weights, a, b)
        for split, feats, images in (("val", val_feats, gathered.val), ("test", test_feats, gathered.test)):
            if feats is None:
                continue
            predictions = score(feats).argmax(-1).tolist()
            entries.append({
                "method": method,
                "split": split,
                "params": params,
                "selected_on": selected_on,
                "metrics": classification_metrics(images.labels, predictions, gathered.classes),
            })
        test_entry = entries[-1]
        echo(
            f"  {method:<12} top-1 {100 * test_entry['metrics']['top1']:6.2f}%  "
            f"balanced {100 * test_entry['metrics']['balanced_top1']:6.2f}%  {params}"
        )

    # 5. results.json
    folder = config.output_dir / "evaluate"
    results = make_results(
        "evaluate", entries, run=run_info(config, gathered.data), config=config.model_dump(mode="json")
    )
    path = write_results(folder, results)
    write_resolved_config(config, folder)
    echo(f"results: {path}")
    return results


def _best_on_val(grid, logits_for, val_labels: torch.Tensor) -> float:
    best, best_top1 = grid[0], -1.0
    for value in grid:
        top1 = float((logits_for(value).argmax(-1) == val_labels).float().mean())
        if top1 > best_top1:
            best, best_top1 = value, top1
    return best


def _text_weights(config: RunConfig, encoder, class_names: dict[str, str], classes: list[str]) -> torch.Tensor:
    from synthshot.classify.text import text_classifier_weights

    bundle = getattr(encoder, "clip", None)
    if bundle is None:
        raise ConfigError(
            f"the text methods need CLIP's text tower, which the {config.features.backend} backend of "
            f"{config.models.clip} does not expose here: set classifier.methods=[prototypes]"
        )
    prompts = class_text_prompts(config, class_names)
    return text_classifier_weights(bundle, {key: prompts[key] for key in classes}, device=str(encoder.device))


def run_info(config: RunConfig, data: FewShotData | None = None) -> dict:
    """What identifies a run in tables and plots."""
    return {
        "name": config.output_dir.name,
        "dataset": dataset_name(config),
        "shots": config.data.shots,
        "images_per_class": config.generation.images_per_class if _has_synthetic(config) else 0,
        "generation_mode": config.generation.mode,
        "backbone": config.models.clip,
        "multiscale": config.features.multiscale,
        "classes": len(data.split) if data else None,
    }
