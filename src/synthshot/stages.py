"""The stages of an experiment, each a function of the resolved config that reads and writes plain
files under `config.output_dir`:

    data        few-shot split        -> splits/<dataset>_shot<K>_seed<S>.json
    similarity  class similarity      -> similarity/similarity.safetensors, negatives.csv
    generate    synthetic images      -> synthetic/<class_slug>/<id>.png, manifest.jsonl

`run` chains the stages the config lists. Every stage writes the resolved config next to its
outputs, and every stage can be rerun: finished work is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from synthshot.config import RunConfig, write_resolved_config
from synthshot.errors import ConfigError, DataError

logger = logging.getLogger("synthshot")

DEFAULT_TEMPLATE = "A photo of a {}"


# ------------------------------------------------------------------------------------- models
def resolve_models(config: RunConfig) -> RunConfig:
    """With `models.tiny_kit` set, build the kit there if missing and point every model at it."""
    if config.models.tiny_kit is None:
        return config
    from synthshot.models.tiny import make_tiny_kit, kit_model_settings

    kit = make_tiny_kit(config.models.tiny_kit)
    models = config.models.model_copy(update=kit_model_settings(kit))
    return config.model_copy(update={"models": models})


def hub_options(config: RunConfig):
    from synthshot.models.hub import HubOptions

    return HubOptions(offline=config.offline, revision=config.models.revision, cache_dir=config.models.cache_dir)


# --------------------------------------------------------------------------------------- data
@dataclass
class FewShotData:
    """The few-shot split of a run: class folder name -> image files, and the prompt names."""

    split_file: Path
    split: dict[str, list[Path]]
    class_names: dict[str, str]  # folder name -> human-readable name used in prompts

    def prompts(self, template: str) -> dict[str, str]:
        return {folder: template.format(name) for folder, name in self.class_names.items()}


def data_root(config: RunConfig) -> Path:
    """Where the images are: the configured root, or the demo dataset drawn for the run."""
    if config.data.demo is not None:
        from synthshot.data.demo import make_demo_dataset

        root = config.output_dir / "demo-data"
        demo = config.data.demo
        make_demo_dataset(root, classes=demo.classes, images_per_class=demo.images_per_class, size=demo.size, seed=demo.seed)
        return root
    if config.data.root is None:
        raise ConfigError("no images given: set data.root to an image folder (root/<class>/<image>) or data.demo")
    return config.data.root


def dataset_name(config: RunConfig) -> str:
    return config.data.dataset or ("demo" if config.data.demo is not None else Path(config.data.root).name)


def prepare_data(config: RunConfig, *, echo=print) -> FewShotData:
    """Build (or reload) the few-shot split and print its summary."""
    from synthshot.data.fewshot import load_split, make_fewshot_split, save_split, split_path, summarize_split
    from synthshot.data.folders import resolve_image_root, scan_image_folder

    data = config.data
    path = split_path(config.output_dir, dataset_name(config), data.shots, data.split_seed)
    if path.is_file():
        split = load_split(path)
        counts = None
    else:
        root = resolve_image_root(Path(data_root(config)), data.layout, shots=data.shots, seed=data.split_seed)
        images = scan_image_folder(root)
        split = make_fewshot_split(
            images, data.shots, data.split_seed, allow_fewer=data.allow_fewer, skip_corrupt=data.skip_corrupt
        )
        save_split(path, split)
        counts = {name: len(files) for name, files in images.items()}
    write_resolved_config(config, config.output_dir)
    echo(f"few-shot split: {path}")
    echo(summarize_split(split, counts))
    return FewShotData(split_file=path, split=split, class_names=class_names(config, list(split)))


def class_names(config: RunConfig, folders: list[str]) -> dict[str, str]:
    from synthshot.data.registry import resolve_class_names

    return resolve_class_names(folders, config.data.dataset)


def prompt_template(config: RunConfig) -> str:
    if config.generation.template:
        return config.generation.template
    if config.data.dataset:
        from synthshot.data.registry import get_dataset

        return get_dataset(config.data.dataset).template
    return DEFAULT_TEMPLATE


# --------------------------------------------------------------------------------- similarity
def similarity_dir(config: RunConfig) -> Path:
    return config.output_dir / "similarity"


def compute_similarity(config: RunConfig, data: FewShotData | None = None, *, echo=print):
    """Class similarity from CLIP image embeddings of the few-shot images, and the negative-class
    distribution; skipped when a result for the same classes and settings exists."""
    from synthshot.generation.similarity import compute_class_similarity
    from synthshot.models.clip import load_clip
    from synthshot.models.hub import resolve_device

    config = resolve_models(config)
    data = data or prepare_data(config, echo=lambda *_: None)
    folder = similarity_dir(config)
    settings = config.similarity
    existing = _load_similarity(folder)
    if existing is not None and (
        existing.classes == sorted(data.split)
        and existing.method == settings.method
        and existing.temperature == settings.temperature
        and existing.sampling == settings.sampling
        and existing.model_id == config.models.clip
    ):
        echo(f"class similarity: {folder} (up to date)")
        return existing
    device = resolve_device(config.device)
    bundle = load_clip(config.models.clip, hub_options(config), device=device)
    result = compute_class_similarity(
        data.split,
        bundle.model,
        bundle.processor,
        method=settings.method,
        temperature=settings.temperature,
        sampling=settings.sampling,
        batch_size=settings.batch_size,
        device=device,
        model_id=config.models.clip,
    )
    result.save(folder)
    write_resolved_config(config, folder)
    echo(f"class similarity: {folder}")
    for name, negatives in result.top_negatives(3).items():
        echo(f"  {name}: " + ", ".join(f"{other} {p:.2f}" for other, p in negatives))
    return result


def _load_similarity(folder: Path):
    from synthshot.generation.similarity import SIMILARITY_FILE, SimilarityResult

    return SimilarityResult.load(folder) if (folder / SIMILARITY_FILE).is_file() else None


# ----------------------------------------------------------------------------------- generate
def generate(config: RunConfig, *, shard: tuple[int, int] | None = None, progress: bool = True, echo=print):
    """Generate `generation.images_per_class` images per class into `output_dir`, resuming what
    exists. Under `accelerate launch` the work items are split across the processes."""
    from synthshot.generation.engine import PipelineRenderer, load_pipeline
    from synthshot.generation.items import plan_items, shard_items
    from synthshot.generation.runner import process_manifest, reconcile, run_generation
    from synthshot.models.hub import resolve_device

    config = resolve_models(config)
    gen = config.generation
    data = prepare_data(config, echo=lambda *_: None)
    if gen.mode == "dual" and len(data.split) < 2:
        raise DataError(
            f"generation.mode=dual needs at least two classes to draw negatives from, but {data.split_file} "
            "has one: use generation.mode=single"
        )
    negative_probs = None
    if gen.mode == "dual" and config.similarity.sampling == "similarity":
        negative_probs = compute_similarity(config, data, echo=echo).as_dict()
    items = plan_items(
        {name: [str(p) for p in files] for name, files in data.split.items()},
        images_per_class=gen.images_per_class,
        base_seed=config.seed,
        prompts=data.prompts(prompt_template(config)),
        mode=gen.mode,
        negative_probs=negative_probs,
    )

    state = _distributed_state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    if shard is not None:
        items = shard_items(items, *shard)
    if world > 1:
        items = shard_items(items, rank, world)
    device = str(state.device) if state and world > 1 else resolve_device(config.device)

    out = config.output_dir
    if rank == 0:
        reconcile(out)
        write_resolved_config(config, out)
    if world > 1:
        state.wait_for_everyone()
    pipe = load_pipeline(config.models, gen, hub_options(config), device)
    report = run_generation(
        items,
        PipelineRenderer(pipe, gen),
        out,
        batch_size=gen.batch_size,
        image_format=gen.image_format,
        record_extra=_record_extra(config),
        progress=progress and rank == 0,
        manifest_name=process_manifest(rank) if world > 1 else "manifest.jsonl",
        reconcile_first=world == 1,
    )
    if world > 1:
        state.wait_for_everyone()
        if rank == 0:
            reconcile(out)
    echo(
        f"generated {len(report.done)} image(s), {len(report.skipped)} already there, {len(report.failed)} failed "
        f"({report.images_per_second:.2f} images/s) -> {out / 'synthetic'}"
    )
    report.raise_for_failures()
    return report


def _record_extra(config: RunConfig) -> dict:
    gen, models = config.generation, config.models
    return {
        "mode": gen.mode,
        "scales": {"w_text": gen.w_text, "w_pos": gen.w_pos, "w_neg": gen.w_neg, "ip_adapter_scale": gen.ip_adapter_scale},
        "steps": gen.steps,
        "scheduler": gen.scheduler,
        "size": [gen.width, gen.height],
        "augment": gen.augment,
        "empty_text": gen.empty_text,
        "models": {
            "diffusion": models.diffusion,
            "ip_adapter": None if gen.mode == "text" else models.ip_adapter,
            "ip_adapter_weights": None if gen.mode == "text" else models.ip_adapter_weights,
        },
    }


def _distributed_state():
    """accelerate's process state when launched with several processes, else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


# ---------------------------------------------------------------------------------------- run
STAGE_FUNCTIONS = {"data": prepare_data, "similarity": compute_similarity, "generate": generate}


def run(config: RunConfig, *, echo=print) -> None:
    """Run the stages the config lists, in pipeline order."""
    config = resolve_models(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, config.output_dir)
    for stage in [s for s in STAGE_FUNCTIONS if s in config.stages]:
        echo(f"== {stage}")
        STAGE_FUNCTIONS[stage](config, echo=echo)
