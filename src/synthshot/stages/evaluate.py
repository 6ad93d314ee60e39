"""`evaluate`: test accuracy of the training-free classifiers (prototypes, text zero-shot, their
mixture, Tip-Adapter); every choice made on validation data only -> evaluate/results.json

A method the encoder cannot run (the text methods on an encoder without a text tower) is skipped
with its reason recorded in results.json, never an abort.
"""

from __future__ import annotations

from synthshot.config import write_resolved_config
from synthshot.errors import ConfigError
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def run(exp: Experiment, *, echo=print) -> dict:
    import torch

    from synthshot.classify.evaluate import IMAGE_METHODS, TEXT_METHODS, Split, class_text_prompts, score_methods
    from synthshot.results import make_results, write_results
    from synthshot.stages import prototypes as prototypes_stage
    from synthshot.stages.features import image_features, load_encoder

    # 1. Methods, data and encoder
    config = exp.config
    settings = config.classifier
    methods = list(dict.fromkeys(settings.methods))
    if not methods:
        raise ConfigError("classifier.methods is empty: name at least one of prototypes, text, combined, tip_adapter")
    sets = exp.classifier_sets
    encoder = load_encoder(exp)
    skipped: list[dict] = []
    if TEXT_METHODS & set(methods) and not encoder.has_text_tower:
        reason = f"{config.models.clip} has no text tower here"
        skipped = [{"method": m, "reason": reason} for m in methods if m in TEXT_METHODS]
        methods = [m for m in methods if m not in TEXT_METHODS]
        echo(f"  skipped {', '.join(s['method'] for s in skipped)}: {reason}")
    echo(f"evaluate: {len(sets.test)} test image(s) from {sets.test.source}")

    # 2. Features of the test (and validation) images
    splits = []
    if sets.val is not None:
        splits.append(Split("val", image_features(exp, encoder, sets.val, "val", echo=echo, quiet_when_cached=True),
                            sets.val.labels))
    splits.append(Split("test", image_features(exp, encoder, sets.test, "test", echo=echo, quiet_when_cached=True),
                        sets.test.labels))

    # 3. What the methods are built from: synthetic prototypes and keys, class text features
    prototypes = keys = key_labels = text_weights = None
    synthetic_count = None
    if IMAGE_METHODS & set(methods):
        prototypes, keys, synthetic = prototypes_stage.run(exp, encoder=encoder, echo=echo, announce=False)
        key_labels = torch.tensor(synthetic.labels)
        synthetic_count = round(len(synthetic) / max(1, len(exp.classes)))
    if TEXT_METHODS & set(methods):
        prompts = class_text_prompts(config.data.dataset, settings.text_templates, exp.data.class_names)
        text_weights = encoder.text_classifier({key: prompts[key] for key in exp.classes})

    # 4. Each method on each split, parameters chosen on validation only
    def show(entry):
        if entry["split"] == "test":
            m = entry["metrics"]
            echo(f"  {entry['method']:<12} top-1 {100 * m['top1']:6.2f}%  balanced {100 * m['balanced_top1']:6.2f}%  "
                 f"{entry['params']}")

    entries = score_methods(methods, settings, splits, exp.classes, prototypes=prototypes, keys=keys,
                            key_labels=key_labels, text_weights=text_weights, on_result=show)

    # 5. results.json
    folder = exp.layout.evaluate
    run_info = exp.run_info(test=sets.test, images_per_class=synthetic_count)
    results = make_results("evaluate", entries, run=run_info, config=config.model_dump(mode="json"), skipped=skipped)
    path = write_results(folder, results)
    write_resolved_config(config, folder)
    echo(f"results: {path}")
    return results


STAGE = Stage(
    name="evaluate",
    run=run,
    reads=("classifier", "data.holdout_shots"),
    after=("features", "prototypes"),
    writes=lambda exp: [exp.layout.evaluate / "results.json"],
)
