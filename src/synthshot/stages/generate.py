"""`generate`: synthetic images -> <synthetic set>/synthetic/<class_slug>/<id>.<ext> + manifest.jsonl

The set's folder comes from the experiment: `synthetic-<key>` under the run (or under the sweep's
`shared/`), keyed by every setting and input the images depend on, so a rerun with other settings
makes a new set beside the old one and never reuses an image made differently. Each manifest
record carries the settings and its item's fingerprint. An explicit `synthetic_dir` pins the
folder; images there made with other settings are then refused with a message naming the change.
"""

from __future__ import annotations

import contextlib
import logging

from synthshot.config import write_resolved_config
from synthshot.distributed import main_process_first, process_state, wait_for_everyone
from synthshot.errors import DataError
from synthshot.io import check_claimable, claim_folder, folder_lock
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage

logger = logging.getLogger("synthshot.generation")


def prompts_per_class(exp: Experiment) -> dict[str, str | list[str]]:
    """Each class's prompt (the template) or prompt list (a prompts.json, cycled by image index)."""
    gen, data = exp.config.generation, exp.data
    path = gen.prompts_file or (exp.layout.prompts_file if "prompts" in exp.config.stages else None)
    if path is None:
        return data.prompts(exp.template)
    from synthshot.prompts import load_prompts

    loaded = load_prompts(path)
    missing = [name for name in data.split if name not in loaded]
    if missing:
        raise DataError(f"prompts file {path} has no prompts for the classes {missing[:8]}: rerun synthshot prompts")
    if gen.prompt_cycle == "first":
        return {name: loaded[name][0] for name in data.split}
    return {name: loaded[name] for name in data.split}


def warn_cut_prompts(
    tokenizer, prompts: dict[str, str | list[str]], images_per_class: int | None = None
) -> dict[str, int]:
    """Warn once per class whose prompts (those drawn for its first `images_per_class` images) are
    longer than the text encoder reads (`tokenizer.model_max_length`, 77 for CLIP): the pipeline
    cuts them silently. Returns the number cut per class."""
    from synthshot.prompts.tokens import prompt_tokens

    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or not 0 < limit < 100_000:  # transformers' "no limit" is a huge number
        return {}
    cut = {}
    for name, value in prompts.items():
        used = list(dict.fromkeys([value] if isinstance(value, str) else value[:images_per_class]))
        lengths = [prompt_tokens(tokenizer, p) for p in used]
        count = sum(n > limit for n in lengths)
        if count:
            cut[name] = count
            logger.warning(
                "class %r: %d of %d prompts are longer than the %d tokens the text encoder reads (up to %d) and are "
                "cut at generation: ask for shorter prompts, or set prompts.max_tokens: %d to reject them",
                name, count, len(used), limit, max(lengths), limit,
            )
    return cut


def plan(exp: Experiment, *, echo=print):
    """The work items of the run: `images_per_class` per class, negatives drawn from the similarity."""
    from synthshot.generation.items import plan_items
    from synthshot.stages import similarity

    gen, data = exp.config.generation, exp.data
    if gen.mode == "dual" and len(data.split) < 2:
        raise DataError(
            f"generation.mode=dual needs at least two classes to draw negatives from, but {data.split_file} "
            "has one: use generation.mode=single"
        )
    negative_probs = None
    if gen.mode == "dual" and exp.config.similarity.sampling == "similarity":
        negative_probs = similarity.run(exp, echo=echo, announce_reuse=False).as_dict()
    return plan_items(
        {name: [str(p) for p in files] for name, files in data.split.items()},
        images_per_class=gen.images_per_class,
        base_seed=exp.config.seed,
        prompts=prompts_per_class(exp),
        mode=gen.mode,
        negative_probs=negative_probs,
    )


def record_extra(exp: Experiment) -> dict:
    """What each manifest record says besides its work item: the settings, in full and as a digest."""
    gen = exp.config.generation
    return {
        "mode": gen.mode,
        "scales": {"w_text": gen.w_text, "w_pos": gen.w_pos, "w_neg": gen.w_neg, "ip_adapter_scale": gen.ip_adapter_scale},
        "steps": gen.steps,
        "scheduler": gen.scheduler,
        "size": [gen.width, gen.height],
        "settings": exp.image_settings,
        "settings_digest": exp.settings_digest,
    }


def run(exp: Experiment, *, shard: tuple[int, int] | None = None, progress: bool = True, echo=print):
    """Generate the images the run asks for into its set, resuming what exists. Under
    `accelerate launch` or `torchrun` the work items are split across the processes; another run
    writing the same set (a job array's sweep runs share sets) is waited for."""
    from synthshot.generation.items import shard_items
    from synthshot.generation.runner import reconcile

    config = exp.config
    state = process_state(exp.device)  # several processes: the launcher's view, checked with accelerate's
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    with main_process_first(state):  # the main process makes the split and the similarity, the others read them
        items = plan(exp, echo=echo if rank == 0 else (lambda *_: None))
    if shard is not None:
        items = shard_items(items, *shard)
    if world > 1:
        items = shard_items(items, rank, world)
    device = str(state.device) if state and world > 1 else exp.device

    out = exp.layout.synthetic
    check_claimable(out, "synthetic set folder (synthetic_dir)", legacy=("manifest.jsonl",))  # every rank
    with contextlib.ExitStack() as held:
        if rank == 0:
            claim_folder(out, "synthetic set folder (synthetic_dir)", legacy=("manifest.jsonl",))
            # Another run writing this set (sweep runs of a job array share sets): wait for it.
            held.enter_context(folder_lock(out, echo=echo))
            reconcile(out)
            write_resolved_config(config, out)
        wait_for_everyone(state)
        try:
            report, load_seconds = _render(exp, items, state, rank, world, device, progress,
                                           echo if rank == 0 else (lambda *_: None))
        except KeyboardInterrupt as exc:  # Ctrl-C: say how much is saved (the command line prints it)
            from synthshot.generation.runner import finished_records
            from synthshot.stages.base import Interrupted

            saved = len({item.id for item in items} & set(finished_records(out)))
            raise Interrupted(f"{saved} of {len(items)} images saved") from exc
        if rank == 0 and report.done:
            _record_timings(out, report, load_seconds, world, len(exp.classes))
    who = f"process {rank + 1}/{world}: " if world > 1 else ""
    echo(
        f"{who}generated {len(report.done)} image(s), {len(report.skipped)} already there, {len(report.failed)} failed "
        f"({report.images_per_second:.2f} images/s) -> {out}"
    )
    report.raise_for_failures()
    return report


def describe_models(models, mode: str) -> str:
    """What `load_pipeline` loads, in a few words: "stable-diffusion-v1-5 + 2 IP-Adapters (ip-adapter-plus_sd15)"."""
    from pathlib import PurePath

    text = PurePath(str(models.diffusion)).name or str(models.diffusion)
    adapters = {"dual": 2, "single": 1}.get(mode, 0)
    if adapters:
        weights = ", ".join(dict.fromkeys(PurePath(str(w)).stem for w in models.ip_adapter_weights[:adapters]))
        text += f" + {adapters} IP-Adapter{'s' if adapters > 1 else ''}" + (f" ({weights})" if weights else "")
    return text


def _record_timings(out, report, load_seconds: float, world: int, classes: int) -> None:
    """Add this call's rendering time to the set's record (`report.collect.GENERATION_TIMINGS`),
    which the report turns into seconds per image and per class."""
    from synthshot.io import atomic_write_json, parse_json
    from synthshot.report.collect import GENERATION_TIMINGS

    path = out / GENERATION_TIMINGS
    try:
        before = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = {}
    before = before if isinstance(before, dict) else {}
    images = len(report.done) * world  # every process renders about as many
    seconds = len(report.done) / report.images_per_second if report.images_per_second > 0 else 0.0
    atomic_write_json(path, {
        "images": int(before.get("images", 0) or 0) + images,
        "seconds": float(before.get("seconds", 0.0) or 0.0) + seconds,
        "load_seconds": round(load_seconds, 3),
        "classes": classes,
        "processes": world,
    })


def _render(exp: Experiment, items, state, rank: int, world: int, device: str, progress: bool, echo=print):
    """Render this process's items into the set; with several processes each appends to its own
    manifest and the main process merges them at the end. Returns the report and the seconds the
    models took to load."""
    import time

    from synthshot.generation.engine import PipelineRenderer, load_pipeline
    from synthshot.generation.fingerprint import item_fingerprint
    from synthshot.generation.runner import process_manifest, reconcile, run_generation

    config, gen, out = exp.config, exp.config.generation, exp.layout.synthetic
    digest, root = exp.settings_digest, exp.data_root
    echo(f"loading {describe_models(config.models, gen.mode)} on {device} ...")
    started = time.perf_counter()
    pipe = load_pipeline(config.models, gen, exp.hub, device)
    load_seconds = time.perf_counter() - started
    if rank == 0:
        warn_cut_prompts(pipe.tokenizer, prompts_per_class(exp), gen.images_per_class)
    report = run_generation(
        items,
        PipelineRenderer(pipe, gen),
        out,
        batch_size=gen.batch_size,
        image_format=gen.image_format,
        record_extra=record_extra(exp),
        progress=progress and rank == 0,
        manifest_name=process_manifest(rank) if world > 1 else "manifest.jsonl",
        reconcile_first=world == 1,
        fingerprint=lambda item: item_fingerprint(digest, item, root),
    )
    if world > 1:
        state.wait_for_everyone()
        if rank == 0:
            reconcile(out)
    return report, load_seconds


def complete(exp: Experiment) -> bool:
    """Every image the run asks for is in its set, made with its settings."""
    from synthshot.generation.sets import count_finished

    ipc = exp.config.generation.images_per_class
    found = count_finished(exp.layout.synthetic, ipc, exp.settings_digest)
    return found >= ipc * len(exp.classes)


STAGE = Stage(
    name="generate",
    run=run,
    reads=("generation", "models", "seed", "similarity", "synthetic_dir", "prompts"),
    ignores=("generation.batch_size", "generation.compile", "generation.channels_last", "generation.vae_batch_size",
             "prompts.cache_dir", "prompts.timeout",
             "prompts.max_retries", "similarity.batch_size"),
    after=("data", "prompts", "similarity"),
    writes=lambda exp: [exp.layout.synthetic / "manifest.jsonl"],
    done=complete,
)
