"""`prototypes`: per-class means of the synthetic features -> prototypes/prototypes.safetensors, .json"""

from __future__ import annotations

from synthshot.config import write_resolved_config
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def run(exp: Experiment, *, encoder=None, echo=print, announce: bool = True):
    """Build and save the prototypes; return (prototypes, synthetic features, synthetic images).
    `announce=False` (evaluate, rebuilding them) leaves out the line saying so."""
    import torch
    from safetensors.torch import save

    from synthshot.classify.evaluate import PROTOTYPES_FILE
    from synthshot.classify.prototypes import class_prototypes
    from synthshot.io import atomic_write_bytes, atomic_write_json
    from synthshot.stages.features import image_features, load_encoder

    config, classes = exp.config, exp.classes
    encoder = encoder or load_encoder(exp)
    synthetic = exp.synthetic.images
    features = image_features(exp, encoder, synthetic, "synthetic", echo=echo, quiet_when_cached=True)
    prototypes = class_prototypes(features, synthetic.labels, classes)

    folder = exp.layout.prototypes
    atomic_write_bytes(folder / PROTOTYPES_FILE, save({"prototypes": prototypes.contiguous()}))
    counts = torch.bincount(torch.tensor(synthetic.labels), minlength=len(classes)).tolist()
    atomic_write_json(
        folder / "prototypes.json",
        {
            "classes": classes,
            "images_per_class": dict(zip(classes, counts)),
            "model": config.models.clip,
            "adapter": str(config.features.adapter) if config.features.adapter else None,
            "multiscale": config.features.multiscale,
            "scales": config.features.scales if config.features.multiscale else None,
            "score": config.classifier.score,
            "synthetic_dir": str(exp.layout.synthetic),
        },
    )
    write_resolved_config(config, folder)
    if announce:
        echo(f"prototypes: {len(classes)} classes from {len(synthetic)} synthetic image(s) -> {folder}")
    return prototypes, features, synthetic


STAGE = Stage(
    name="prototypes",
    run=run,
    reads=("classifier.score", "features", "models.clip", "generation.images_per_class"),
    after=("features",),
    writes=lambda exp: [exp.layout.prototypes / "prototypes.safetensors"],
)
