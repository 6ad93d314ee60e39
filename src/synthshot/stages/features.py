"""`features`: CLIP image features of the test, validation, few-shot and synthetic images, single-
or multi-scale, cached per file -> features/<set>_<model>[_lora-...][_ms...].safetensors (+ .json)"""

from __future__ import annotations

from pathlib import Path

from synthshot.config import write_resolved_config
from synthshot.data.labelled import LabelledImages
from synthshot.experiment import Experiment
from synthshot.io import slugify
from synthshot.stages.base import Stage


def load_encoder(exp: Experiment):
    """The CLIP image encoder of `models.clip` (with `features.adapter`'s LoRA when given)."""
    from synthshot.features.backends import load_image_encoder
    from synthshot.models.hub import resolve_dtype

    config = exp.config
    return load_image_encoder(
        config.models.clip,
        exp.hub,
        backend=config.features.backend,
        device=exp.device,
        dtype=resolve_dtype(config.features.precision, exp.device),
        adapter=config.features.adapter,
    )


def cache_name(exp: Experiment, set_name: str) -> str:
    """One cache file per image set, model, adapter and scale setting, so a sweep over backbones
    never makes two models share (and recompute) one cache."""
    config = exp.config
    parts = [set_name, slugify(config.models.clip)[:60]]
    if config.features.adapter is not None:
        parts.append("lora-" + slugify(Path(config.features.adapter).name))
    if config.features.multiscale:
        parts.append("ms" + "-".join(str(s) for s in config.features.scales) + f"-seed{config.features.seed}")
    return "_".join(parts)


def image_features(exp: Experiment, encoder, images: LabelledImages, set_name: str, *, echo=print):
    """[N, D] L2-normalised features of `images`, from the cache where it is up to date."""
    from synthshot.features.extract import extract_features

    feats = exp.config.features
    path = exp.layout.features / f"{cache_name(exp, set_name)}.safetensors"
    result = extract_features(encoder, images.files, multiscale=feats.multiscale, scales=feats.scales,
                              seed=feats.seed, batch_size=feats.batch_size, cache=path, progress=False)
    echo(f"  {set_name}: {len(images)} image(s) -> {path}")
    return result.features


def run(exp: Experiment, *, echo=print) -> dict:
    """Extract (or reuse) the features of every image set the run has."""
    encoder = load_encoder(exp)
    feats = exp.config.features
    mode = f"multi-scale {feats.scales}" if feats.multiscale else "single-scale"
    echo(f"features ({mode}, {exp.config.models.clip}):")
    sets: dict[str, LabelledImages] = {"test": exp.classifier_sets.test}
    if exp.classifier_sets.val is not None:
        sets["val"] = exp.classifier_sets.val
    if exp.data.split_file is not None:
        sets["fewshot"] = exp.data.labelled()
    if exp.has_synthetic:
        sets["synthetic"] = exp.synthetic.images
    out = {name: image_features(exp, encoder, images, name, echo=echo) for name, images in sets.items()}
    write_resolved_config(exp.config, exp.layout.features)
    return out


STAGE = Stage(
    name="features",
    run=run,
    reads=("features", "models.clip", "classifier.test", "classifier.val", "seed", "generation.images_per_class",
           "data.holdout_shots"),
    after=("data", "generate"),
    writes=lambda exp: [exp.layout.features],
)
