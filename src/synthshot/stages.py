"""The first stages of an experiment, each a function of the resolved config that reads and
writes plain files under `config.output_dir`:

    data        few-shot split        -> splits/<dataset>_shot<K>_seed<S>.json (none when zero-shot)
    prompts     class prompts         -> prompts/prompts.json
    similarity  class similarity      -> similarity/similarity.safetensors, negatives.csv
    generate    synthetic images      -> synthetic/<class_slug>/<id>.png, manifest.jsonl

The classifier stages (features, prototypes, evaluate) are in `classify/evaluate.py`, fine-tuning
in `classify/finetune.py`, the report in `report/`; `runs.py` chains them all. Every stage writes
the resolved config next to its outputs, and every stage can be rerun: finished work is kept.
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

    split_file: Path | None  # None in zero-shot runs
    split: dict[str, list[Path]]
    class_names: dict[str, str]  # folder name -> human-readable name used in prompts

    def prompts(self, template: str) -> dict[str, str]:
        return {folder: template.format(name) for folder, name in self.class_names.items()}

    def files(self) -> set[Path]:
        """The resolved paths of every few-shot image (kept out of held-out test sets)."""
        return {p.resolve() for files in self.split.values() for p in files}


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
    """Build (or reload) the few-shot split and print its summary. With `data.shots=0` (zero-shot)
    there is no split: the classes come from `data.root`'s class folders or the registry."""
    from synthshot.data.fewshot import load_split, make_fewshot_split, save_split, split_path, summarize_split

    data = config.data
    if data.shots == 0:
        return _zero_shot_classes(config, echo)
    path = split_path(config.output_dir, dataset_name(config), data.shots, data.split_seed)
    if path.is_file():
        split = load_split(path)
        counts = None
    else:
        images = _labelled_pool(config)
        split = make_fewshot_split(
            images, data.shots, data.split_seed, allow_fewer=data.allow_fewer, skip_corrupt=data.skip_corrupt
        )
        save_split(path, split)
        counts = {name: len(files) for name, files in images.items()}
    write_resolved_config(config, config.output_dir)
    echo(f"few-shot split: {path}")
    echo(summarize_split(split, counts))
    return FewShotData(split_file=path, split=split, class_names=class_names(config, list(split)))


def _coop_split(config: RunConfig):
    from synthshot.data.coop import load_coop_split

    return load_coop_split(coop_split_file(config), image_root=data_root(config))


def _labelled_pool(config: RunConfig) -> dict[str, list[Path]]:
    """class -> every image the few-shot split may draw from: an image folder (or a peer layout),
    or the train list of a CoOp split file."""
    from synthshot.data.folders import resolve_image_root, scan_image_folder

    data = config.data
    root = Path(data_root(config))
    if data.layout == "coop":
        split = _coop_split(config)
        missing = split.missing_files("train")
        if missing:
            shown = ", ".join(str(p) for p in missing[:5])
            raise DataError(f"{len(missing)} train file(s) of {split.source} are missing under {root}, e.g. {shown}")
        return split.by_class("train")
    return scan_image_folder(resolve_image_root(root, data.layout, shots=data.shots, seed=data.split_seed))


def coop_split_file(config: RunConfig) -> Path:
    """data.split_file, or the split `synthshot datasets prepare` wrote under data.root (the CoOp
    protocol where the dataset has one, else the official split)."""
    if config.data.split_file is not None:
        return config.data.split_file
    folder = Path(data_root(config)) / "synthshot"
    for name in ("split_coop.json", "split_official.json"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder} holds no split file (split_coop.json or split_official.json): prepare the dataset with "
        "`synthshot datasets prepare NAME --root DIR` and point data.root at DIR/<dataset folder>, or set data.split_file"
    )


def resolve_eval_source(config: RunConfig, source):
    """An evaluation source with the run's defaults filled in: a CoOp source without its own split
    file reads the data's split file and root."""
    if source.source != "coop" or source.split_file is not None:
        return source
    return source.model_copy(update={"split_file": coop_split_file(config), "root": source.root or data_root(config)})


def _zero_shot_classes(config: RunConfig, echo) -> FewShotData:
    data = config.data
    if data.root is not None or data.demo is not None:
        if data.layout == "coop":
            names = _coop_split(config).class_keys
        else:
            from synthshot.data.folders import resolve_image_root, scan_image_folder

            root = resolve_image_root(Path(data_root(config)), data.layout, shots=1, seed=data.split_seed)
            names = list(scan_image_folder(root))
    elif data.dataset is not None:
        from synthshot.data.registry import get_dataset

        names = get_dataset(data.dataset).class_names()
    else:
        raise ConfigError("zero-shot (data.shots=0) needs class names: set data.dataset or data.root")
    write_resolved_config(config, config.output_dir)
    echo(f"zero-shot: {len(names)} classes, no real images")
    return FewShotData(split_file=None, split={name: [] for name in names}, class_names=class_names(config, names))


def class_names(config: RunConfig, folders: list[str]) -> dict[str, str]:
    """class key -> prompt name: from the CoOp split file (which defines the names) or the registry."""
    from synthshot.data.registry import resolve_class_names

    if config.data.layout == "coop":
        names = _coop_split(config).prompt_names()
        return {key: names[key] for key in folders}

    return resolve_class_names(folders, config.data.dataset)


def prompt_template(config: RunConfig) -> str:
    if config.generation.template:
        return config.generation.template
    if config.data.dataset:
        from synthshot.data.registry import get_dataset

        return get_dataset(config.data.dataset).template
    return DEFAULT_TEMPLATE


# ------------------------------------------------------------------------------------ prompts
def prompts_file(config: RunConfig) -> Path:
    return config.output_dir / "prompts" / "prompts.json"


def write_prompts(config: RunConfig, data: FewShotData | None = None, *, echo=print) -> dict[str, list[str]]:
    """N prompts per class from the registry templates or an LLM (cached) -> prompts/prompts.json."""
    from synthshot.models.hub import resolve_device
    from synthshot.prompts import write_class_prompts

    config = resolve_models(config)
    data = data or prepare_data(config, echo=lambda *_: None)
    folder = prompts_file(config).parent
    prompts = write_class_prompts(
        config.prompts,
        data.class_names,
        folder,
        dataset=config.data.dataset,
        hub_options=hub_options(config),
        device=resolve_device(config.device),
        echo=echo,
    )
    write_resolved_config(config, folder)
    echo(f"prompts: {prompts_file(config)} ({config.prompts.per_class} per class, {config.prompts.backend})")
    return prompts


def generation_prompts(config: RunConfig, data: FewShotData) -> dict[str, str | list[str]]:
    """Each class's prompt (the template) or prompt list (a prompts.json, cycled by image index)."""
    gen = config.generation
    path = gen.prompts_file or (prompts_file(config) if "prompts" in config.stages else None)
    if path is None:
        return data.prompts(prompt_template(config))
    from synthshot.prompts import load_prompts

    loaded = load_prompts(path)
    missing = [name for name in data.split if name not in loaded]
    if missing:
        raise DataError(f"prompts file {path} has no prompts for the classes {missing[:8]}: rerun synthshot prompts")
    if gen.prompt_cycle == "first":
        return {name: loaded[name][0] for name in data.split}
    return {name: loaded[name] for name in data.split}


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
    if data.split_file is None:
        raise ConfigError("class similarity needs real images: data.shots=0 (zero-shot) has none; use generation.mode=text")
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
def synthetic_root(config: RunConfig) -> Path:
    """The folder of the synthetic set (synthetic/ + manifest.jsonl): output_dir unless a sweep
    shares one set between runs through `synthetic_dir`."""
    return config.synthetic_dir or config.output_dir


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
        prompts=generation_prompts(config, data),
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

    out = synthetic_root(config)
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


def synthetic_set(config: RunConfig, classes: list[str], prompt_names: dict[str, str]):
    """The finished synthetic images of the run as labelled images (the class recorded in the
    manifest, never inferred from paths), the first `generation.images_per_class` of each class."""
    from synthshot.data.labelled import LabelledImages, match_classes
    from synthshot.generation.runner import finished_records

    out = synthetic_root(config)
    records = [r for r in finished_records(out).values() if r["index"] < config.generation.images_per_class]
    if not records:
        raise DataError(f"{out} holds no synthetic images (manifest.jsonl): run `synthshot generate` first")
    records.sort(key=lambda r: (r["class_name"], r["index"]))
    mapping = match_classes(sorted({r["class_name"] for r in records}), classes, prompt_names, f"the manifest of {out}")
    return LabelledImages(
        files=[out / r["file"] for r in records],
        labels=[mapping[r["class_name"]] for r in records],
        classes=list(classes),
        source=f"synthetic images of {out}",
    )


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
def run(config: RunConfig, *, force: bool = False, echo=print):
    """Run the stages the config lists (or every run of its sweep), skipping finished ones."""
    from synthshot.runs import run as run_all

    return run_all(config, force=force, echo=echo)
