"""`similarity`: CLIP class similarity of the few-shot images and the negative-class distribution
(DIPSY) -> similarity/similarity.safetensors, negatives.csv"""

from __future__ import annotations

from synthshot.config import write_resolved_config
from synthshot.errors import ConfigError, DataError
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def run(exp: Experiment, *, echo=print, announce_reuse: bool = True):
    """Compute the similarity, or reuse the saved one when it is of the same classes and settings
    (said in a line unless `announce_reuse` is false: `generate` reads it after this stage)."""
    from synthshot.generation.similarity import SIMILARITY_FORMAT, compute_class_similarity
    from synthshot.models.clip import load_clip

    config, data = exp.config, exp.data
    if data.split_file is None:
        raise ConfigError("class similarity needs real images: data.shots=0 (zero-shot) has none; use generation.mode=text")
    folder = exp.layout.similarity
    settings = config.similarity
    try:
        existing = load(exp)
    except DataError as exc:  # the stage's own file, damaged: computed again below
        echo(f"class similarity: the saved file cannot be used, so it is computed again ({exc})")
        existing = None
    if existing is not None and (
        existing.format == SIMILARITY_FORMAT
        and existing.classes == sorted(data.split)
        and existing.method == settings.method
        and existing.temperature == settings.temperature
        and existing.sampling == settings.sampling
        and existing.model_id == config.models.clip
    ):
        if announce_reuse:
            echo(f"class similarity: {folder} (up to date)")
        return existing
    bundle = load_clip(config.models.clip, exp.hub, device=exp.device)
    result = compute_class_similarity(
        data.split,
        bundle.model,
        bundle.processor,
        method=settings.method,
        temperature=settings.temperature,
        sampling=settings.sampling,
        batch_size=settings.batch_size,
        device=exp.device,
        model_id=config.models.clip,
    )
    result.save(folder)
    write_resolved_config(config, folder)
    echo(f"class similarity: {folder}")
    for name, negatives in result.top_negatives(3).items():
        echo(f"  {name}: " + ", ".join(f"{other} {p:.2f}" for other, p in negatives))
    return result


def load(exp: Experiment):
    from synthshot.generation.similarity import SIMILARITY_FILE, SimilarityResult

    folder = exp.layout.similarity
    return SimilarityResult.load(folder) if (folder / SIMILARITY_FILE).is_file() else None


STAGE = Stage(
    name="similarity",
    run=run,
    reads=("similarity", "models.clip"),
    after=("data",),
    writes=lambda exp: [exp.layout.similarity / "similarity.safetensors"],
)
