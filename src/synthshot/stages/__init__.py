"""The stages of an experiment, one module each, declared in one table.

    data        few-shot split                      -> splits/
    prompts     class prompts (templates or an LLM) -> prompts/prompts.json
    similarity  CLIP class similarity (DIPSY)        -> similarity/
    generate    synthetic images                    -> synthetic-<key>/ (or the sweep's shared/)
    features    CLIP image features, cached          -> features/
    prototypes  per-class synthetic prototypes       -> prototypes/
    finetune    CLIP + LoRA                          -> finetune/
    evaluate    training-free classifiers            -> evaluate/results.json
    report      HTML report                          -> report/

Each module's `STAGE` says which config keys the stage reads, which stages it reads from, which
files it writes and its function `run(experiment, *, echo, **options)`. `synthshot run` chains
them from `STAGES` alone (`synthshot/runs.py`); the CLI verbs call the same functions. The
libraries (generation/, features/, classify/, data/, ...) never import this package.
"""

from __future__ import annotations

from synthshot.stages import data, evaluate, features, finetune, generate, prompts, prototypes, report, similarity
from synthshot.stages.base import Stage

STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE
    for module in (data, prompts, similarity, generate, features, prototypes, finetune, evaluate, report)
}

__all__ = ["STAGES", "Stage"]
