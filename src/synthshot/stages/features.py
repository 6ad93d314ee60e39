"""`features`: CLIP image features of the test, validation, few-shot and synthetic images, single-
or multi-scale, cached per file -> features/<set>_<model>[_lora-...][_ms...].safetensors (+ .json)"""

from __future__ import annotations

import logging
from pathlib import Path

from synthshot.config import write_resolved_config
from synthshot.data.labelled import LabelledImages
from synthshot.distributed import main_process_first, process_state, wait_for_everyone
from synthshot.experiment import Experiment
from synthshot.io import slugify
from synthshot.stages.base import Stage


def load_encoder(exp: Experiment, device: str | None = None):
    """The CLIP image encoder of `models.clip` (with `features.adapter`'s LoRA when given)."""
    from synthshot.features.backends import load_image_encoder
    from synthshot.models.hub import resolve_dtype

    config, device = exp.config, device or exp.device
    return load_image_encoder(
        config.models.clip,
        exp.hub,
        backend=config.features.backend,
        device=device,
        dtype=resolve_dtype(config.features.precision, device),
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


class _CacheCounts(logging.Filter):
    """Takes the extraction's own "N files, R reused from ..., C to compute" log line, so that the
    stage says it once, in its line (one line per event)."""

    def __init__(self):
        super().__init__()
        self.counts: tuple | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("features: %d files, %d reused"):
            self.counts = self.counts or record.args
            return False
        return True


def image_features(exp: Experiment, encoder, images: LabelledImages, set_name: str, *, echo=print, state=None,
                   quiet_when_cached: bool = False):
    """[N, D] L2-normalised features of `images`, from the cache where it is up to date; one line
    says how many were reused and computed (none when `quiet_when_cached` and nothing was computed:
    a later stage reading what the features stage made).

    With several processes (`state`), each encodes every world-th image into a part cache of its
    own, and the main process merges the parts into the cache without encoding anything again."""
    from synthshot.features.extract import extract_features

    feats = exp.config.features
    path = exp.layout.features / f"{cache_name(exp, set_name)}.safetensors"
    options = dict(multiscale=feats.multiscale, scales=feats.scales, seed=feats.seed, batch_size=feats.batch_size,
                   progress=False)
    counter, logger = _CacheCounts(), logging.getLogger("synthshot.features")
    logger.addFilter(counter)
    try:
        result = _extract(extract_features, encoder, images, path, options, state)
    finally:
        logger.removeFilter(counter)
    if counter.counts is not None and state is None:
        _, reused, _, computed = counter.counts
        if computed == 0 and quiet_when_cached:
            return result.features
        echo(f"  {set_name}: {len(images)} image(s), {reused} reused, {computed} computed -> {path}")
    else:
        echo(f"  {set_name}: {len(images)} image(s) -> {path}")
    return result.features


def _extract(extract_features, encoder, images: LabelledImages, path: Path, options: dict, state):
    """The features of `images` in the cache `path`, by this process alone or split between several."""
    if state is None:
        result = extract_features(encoder, images.files, cache=path, **options)
    else:
        rank, world = state.process_index, state.num_processes
        parts = [path.with_name(f"{path.stem}.part{r}-of-{world}.safetensors") for r in range(world)]
        extract_features(encoder, images.files[rank::world], cache=parts[rank], reuse=[path], **options)
        wait_for_everyone(state)
        if state.is_main_process:
            extract_features(encoder, images.files, cache=path, reuse=parts, **options)
            for part in parts:  # written by this stage's processes: theirs to remove
                part.unlink(missing_ok=True)
                part.with_suffix(".json").unlink(missing_ok=True)
        wait_for_everyone(state)
        result = extract_features(encoder, images.files, cache=path, **options)  # read back: nothing to encode
    return result


def run(exp: Experiment, *, echo=print) -> dict:
    """Extract (or reuse) the features of every image set the run has; under a launcher of several
    processes the images are split between them."""
    state = process_state(exp.device)
    with main_process_first(state):  # the split (and a drawn demo dataset) are made once
        exp.data  # noqa: B018
    encoder = load_encoder(exp, str(state.device) if state is not None else None)
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
    main = state is None or state.is_main_process
    out = {name: image_features(exp, encoder, images, name, echo=echo if main else (lambda *_: None), state=state)
           for name, images in sets.items()}
    if main:
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
