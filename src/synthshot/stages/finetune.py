"""`finetune`: CLIP + LoRA on the real shots and the run's synthetic images (DIPSY Eq. 10)
-> finetune/checkpoints/epoch_<n>/, adapter/, metrics.jsonl, results.json

The training images are exactly the run's: the few-shot split and the first
`generation.images_per_class` images of each class of its synthetic set, wherever that set lives
(a sweep shares one). What happens to an earlier fine-tuning run in the same folder:

    mode "auto"     (`run`, `synthshot finetune`) continue it when its settings and data are this
                    run's; otherwise move it aside (a line says where) and train anew
    mode "resume"   (`synthshot finetune --resume`) continue it, or stop with the reason
    mode "restart"  (`run --force`, `synthshot finetune --restart`) move it aside and train anew
"""

from __future__ import annotations

import math

from pathlib import Path

from synthshot.config import write_resolved_config
from synthshot.distributed import check_agrees
from synthshot.io import atomic_write_text
from synthshot.errors import SynthshotError
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage

MODES = ("auto", "resume", "restart")
PREVIOUS = Path(".synthshot") / "previous"


def training_sets(exp: Experiment):
    """(real, synthetic) training images, labelled by their class's position in the run's classes."""
    from synthshot.classify.train_data import TrainImages, check_training_sets, real_images

    lam, classes = exp.config.finetune.lam, exp.classes
    real = real_images(exp.data.split, classes) if lam > 0 else TrainImages()
    synthetic = TrainImages()
    if lam < 1 and exp.has_synthetic:
        images = exp.synthetic.images
        synthetic = TrainImages(files=list(images.files), labels=list(images.labels))
    check_training_sets(real, synthetic, classes, lam, exp.layout.synthetic)
    return real, synthetic


def _checkpoint_to_resume(exp, out, mode, bundle, lora, fingerprint, num_processes, say, main):
    """The checkpoint to continue from (with its state), or (None, None) after moving an earlier
    run aside; in mode "resume" a checkpoint that cannot be continued is an error."""
    from synthshot.classify.finetune import check_resumable, last_checkpoint, move_aside, read_trainer_state
    from synthshot.classify.lora import check_adapter

    checkpoint = last_checkpoint(out)
    reason = None
    if checkpoint is not None and mode != "restart":
        try:
            check_adapter(checkpoint, bundle.model, settings=lora)
            state = read_trainer_state(checkpoint)
            check_resumable(checkpoint, state, exp.config.finetune, fingerprint, num_processes)
            return checkpoint, state
        except SynthshotError as exc:
            if mode == "resume":
                raise
            reason = str(exc).split(": ", 1)[-1].split(":", 1)[0]
    elif checkpoint is None and mode == "resume":
        say(f"no checkpoint in {out / 'checkpoints'}: training from the start")
    if main:
        moved = move_aside(out, exp.layout.out / PREVIOUS)
        if moved is not None:
            why = f" ({reason})" if reason else ""
            say(f"an earlier fine-tuning run{why} was moved aside to {moved}; training anew")
    return None, None


def run(exp: Experiment, *, mode: str = "auto", echo=print, progress: bool = True) -> dict:
    """Fine-tune CLIP with LoRA; return the results dict (also written to finetune/results.json)."""
    import torch

    from synthshot.classify import finetune as ft
    from synthshot.classify.lora import LoraSettings, adapter_info, load_adapter_weights, model_probe
    from synthshot.classify.metrics import classification_metrics
    from synthshot.classify.text import class_prompts, class_templates
    from synthshot.classify.train_data import AugmentSettings, PairedImages, TrainTransform, collate_pairs, worker_count
    from synthshot.experiment import describe_images
    from synthshot.io import append_jsonl
    from synthshot.models.clip import load_clip
    from synthshot.results import make_results, write_results

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    # 1. The process group, the data, the output folder.
    config, settings, classes = exp.config, exp.config.finetune, exp.classes
    out = exp.layout.finetune
    accelerator, precision_note = ft.make_accelerator(exp.device, settings.precision)
    main = accelerator.is_main_process
    say = echo if main else (lambda *_: None)
    if precision_note:
        say(precision_note)
    check_agrees(accelerator.num_processes, accelerator.process_index)  # the launcher's view and accelerate's
    with accelerator.main_process_first():  # the split is made once, the other processes read it
        real, synthetic = training_sets(exp)
        sets = exp.finetune_sets  # validation chooses the epoch, test is reported only; disjoint

    # 2. CLIP; an earlier run is continued only if it fits the model, the LoRA settings, the data.
    bundle = load_clip(config.models.clip, exp.hub, device="cpu")
    base_probe = model_probe(bundle.model)
    lora = LoraSettings.from_config(settings)
    fingerprint = ft.data_fingerprint(real, synthetic, classes)
    if main:
        ft.remove_partial_checkpoints(out / ft.CHECKPOINTS)
    checkpoint, state = _checkpoint_to_resume(exp, out, mode, bundle, lora, fingerprint, accelerator.num_processes,
                                              say, main)
    accelerator.wait_for_everyone()
    names = list(settings.trackers) + (["tensorboard"] if settings.tensorboard else [])
    trackers = ft.make_trackers(names, out, config.output_dir.name, config.model_dump(mode="json")) if main \
        else ft.Trackers([])

    # 3. LoRA and the text side: class prompts from the registry's templates.
    templates = class_templates(config.data.dataset, settings.text_templates)
    prompts = class_prompts(exp.data.class_names, templates)
    classifier = ft.build_classifier(bundle, lora, prompts, seed=config.seed,
                                     gradient_checkpointing=settings.gradient_checkpointing)

    # 4. Batches (half real, half synthetic), optimizer, schedule; all prepared by accelerate.
    both = len(real) > 0 and len(synthetic) > 0
    pairs_per_batch = settings.batch_size // 2 if both else settings.batch_size
    pairs_per_step = pairs_per_batch * accelerator.num_processes
    iterations = settings.total_iterations(config.data.shots)
    if iterations is not None:  # a length in steps (CLIP-LoRA): whole epochs of equal length, the data cycled
        length, limit = math.ceil(iterations / settings.epochs) * pairs_per_step, None
    else:
        length, limit = None, settings.steps_per_epoch * pairs_per_step if settings.steps_per_epoch else None
    augment = AugmentSettings.from_config(settings) if settings.augment else None
    dataset = PairedImages(real, synthetic, TrainTransform(bundle.processor, augment), seed=config.seed, limit=limit,
                           length=length)
    workers = worker_count(settings.num_workers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=pairs_per_batch, shuffle=False, num_workers=workers,
                                         collate_fn=collate_pairs)
    optimizer = ft.make_optimizer(classifier, settings.lr, settings.weight_decay)
    classifier, optimizer, loader = accelerator.prepare(classifier, optimizer, loader)
    eval_loaders = {name: accelerator.prepare(ft.eval_loader(images, bundle.processor, settings.eval_batch_size, workers))
                    for name, images in (("val", sets.val), ("test", sets.test)) if images is not None}
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = ft.make_scheduler(optimizer, total_steps, settings.warmup_steps, settings.lr, settings.min_lr)
    peft_model = accelerator.unwrap_model(classifier).peft_model
    info = adapter_info(config.models.clip or bundle.name, base_probe, lora, classes, prompts)
    say(f"fine-tuning {config.models.clip} with LoRA r={lora.r} on {'+'.join(lora.towers)}: {len(real)} real and "
        f"{len(synthetic)} synthetic images of {len(classes)} classes, lam={settings.lam:g}; {settings.epochs} epoch(s) "
        f"of {steps_per_epoch} step(s), batch {settings.batch_size} x {accelerator.num_processes} process(es)")
    if iterations is not None and total_steps != iterations:
        say(f"note: {iterations} iterations do not split into {settings.epochs} equal epochs: training runs "
            f"{total_steps} steps")
    if settings.warmup_steps >= total_steps and settings.warmup_steps:
        say(f"note: the warm-up ({settings.warmup_steps} steps) is not shorter than training ({total_steps} steps), "
            "so the learning rate never reaches finetune.lr")

    start_epoch, history, global_step = 0, [], 0
    if checkpoint is not None:
        start_epoch, history, global_step = ft.restore_checkpoint(checkpoint, state, peft_model, optimizer, scheduler,
                                                                  accelerator)
        say(f"resuming from {checkpoint} (epoch {start_epoch} of {settings.epochs} done)")
    if main:
        ft.trim_metrics(out / ft.METRICS_FILE, start_epoch)
        write_resolved_config(config, out)

    def log_step(epoch: int, step: int, loss: float, rate: float) -> None:
        if main:
            record = {"kind": "step", "epoch": epoch, "step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                      "images_per_s": rate}
            append_jsonl(out / ft.METRICS_FILE, record)
            trackers.log({f"train/{key}": record[key] for key in ("loss", "lr", "images_per_s")}, step=step)

    # 5. Train: each epoch ends with validation and an atomic checkpoint.
    for epoch in range(start_epoch, settings.epochs):
        torch.manual_seed(ft.derive_seed(config.seed, epoch, accelerator.process_index))  # dropout
        loader.set_epoch(epoch)  # the dataset's order and augmentation for this epoch
        entry = ft.train_epoch(classifier, loader, optimizer, scheduler, accelerator, settings.lam, epoch=epoch + 1,
                               first_step=global_step, log_every=settings.log_every, log=log_step,
                               bar=ft.progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{settings.epochs}",
                                                   progress and main))
        global_step += steps_per_epoch
        if "val" in eval_loaders:
            found, true = ft.predict(classifier, eval_loaders["val"], accelerator,
                                     ft.progress_bar(len(eval_loaders["val"]), f"evaluating val (epoch {epoch + 1})",
                                                     progress and main, unit="batch"))
            val_metrics = classification_metrics(true, found, classes)
            entry.update(val_top1=val_metrics["top1"], val_balanced_top1=val_metrics["balanced_top1"])
        history.append(entry)
        if main:
            append_jsonl(out / ft.METRICS_FILE, {"kind": "epoch", **entry})
            trackers.log({f"epoch/{key}": entry[key] for key in ("loss", "val_top1") if key in entry}, step=global_step)
            folder = out / ft.CHECKPOINTS / f"epoch_{epoch + 1}"
            saved = ft.trainer_state(epoch + 1, global_step, history, settings, fingerprint, optimizer, scheduler,
                                     accelerator, steps_per_epoch, pairs_per_batch)
            ft.save_checkpoint(folder, peft_model, info, saved, optimizer)
            ft.prune_checkpoints(out / ft.CHECKPOINTS, keep={epoch + 1, ft.select_epoch(history, settings.select)})
        accelerator.wait_for_everyone()
        val_text = f", val top-1 {100 * entry['val_top1']:.2f}%" if "val_top1" in entry else ""
        say(f"epoch {epoch + 1}/{settings.epochs}: loss {entry['loss']:.4f}{val_text}, "
            f"{entry['images_per_s']:.1f} images/s")

    # 6. The chosen adapter: best validation accuracy (earliest on ties), or the last epoch.
    chosen = ft.select_epoch(history, settings.select) if history else settings.epochs
    if chosen != settings.epochs:
        load_adapter_weights(peft_model, out / ft.CHECKPOINTS / f"epoch_{chosen}")
    if main:
        ft.save_adapter_folder(out / ft.ADAPTER_DIR, peft_model, {**info, "epoch": chosen})
    accelerator.wait_for_everyone()

    # 7. Evaluate the chosen adapter: test once (and validation, to report it); write results.json.
    entries = []
    params = ft.result_params(settings, lora, chosen, total_steps, real, synthetic, templates, out / ft.ADAPTER_DIR)
    selected_on = "val" if sets.val is not None and settings.select == "val" else None
    for split in ("test", "val"):
        if split not in eval_loaders:
            continue
        found, true = ft.predict(classifier, eval_loaders[split], accelerator,
                                 ft.progress_bar(len(eval_loaders[split]), f"evaluating {split}", progress and main,
                                                 unit="batch"))
        metrics = classification_metrics(true, found, classes)
        source = sets.test.source if split == "test" else sets.val.source
        entries.append({"method": "finetune", "split": split, "params": {**params, "source": source},
                        "selected_on": selected_on, "metrics": metrics})
    run_info = {"name": config.output_dir.name, "dataset": exp.dataset_name, "shots": config.data.shots,
                "images_per_class": round(len(synthetic) / len(classes)), "backbone": config.models.clip,
                "test_set": describe_images(sets.test)}
    results = make_results("finetune", entries, run=run_info, config=config.model_dump(mode="json"))
    if main:
        path = write_results(out, results)
        atomic_write_text(out / ft.ADAPTER_DIR / "README.md", adapter_card(config, settings, lora, classes, entries,
                                                                         chosen, real, synthetic))
        trackers.log({f"results/{e['split']}/{key}": e["metrics"][key] for e in entries
                      for key in ("top1", "balanced_top1")}, step=global_step)
        trackers.close()
        say(f"test top-1 {100 * entries[0]['metrics']['top1']:.2f}% on {entries[0]['metrics']['num_images']} images "
            f"(adapter of epoch {chosen}{', chosen on val' if selected_on else ', the last'}) -> {path}")
    accelerator.wait_for_everyone()
    return results


def adapter_card(config, settings, lora, classes, entries, chosen, real, synthetic) -> str:
    """The adapter folder's README.md (instead of peft's empty template): what it adapts, how it
    was trained, how well it did, how to load it."""
    accuracy = [f"- top-1 on {e['split']} ({e['metrics']['num_images']} images): {100 * e['metrics']['top1']:.2f}%"
                for e in entries]
    return "\n".join([
        "---",
        f"base_model: {config.models.clip}",
        "library_name: peft",
        "tags: [synthshot, clip, lora, image-classification]",
        "---",
        "",
        f"# LoRA adapter of {config.models.clip}, fine-tuned by synthshot",
        "",
        f"A CLIP image classifier of {len(classes)} classes, trained with LoRA (r={lora.r}, alpha={lora.alpha:g}, "
        f"dropout={lora.dropout:g}, on {', '.join(lora.targets)} of the {' and '.join(lora.towers)} tower(s)) on "
        f"{len(real)} real and {len(synthetic)} synthetic image(s) (recipe {settings.recipe}, lam={settings.lam:g}, "
        f"lr={settings.lr:g}); the adapter of epoch {chosen} of {settings.epochs} is kept ({settings.select}).",
        "",
        *accuracy,
        "",
        "Classes (label order): " + ", ".join(f"`{c}`" for c in classes),
        "",
        "Use it: `synthshot predict RUN_FOLDER images/`, or `synthshot export RUN_FOLDER -o DIR` for a merged CLIP "
        "model that transformers loads alone. With peft: `PeftModel.from_pretrained(CLIPModel.from_pretrained("
        f"'{config.models.clip}'), 'adapter')`; the class prompts are in `synthshot_adapter.json`.",
        "",
    ])


STAGE = Stage(
    name="finetune",
    run=run,
    reads=("finetune", "models.clip", "seed", "generation.images_per_class", "data.holdout_shots"),
    ignores=("finetune.trackers", "finetune.tensorboard", "finetune.log_every", "finetune.num_workers"),
    after=("data", "generate"),
    writes=lambda exp: [exp.layout.finetune / "results.json"],
)
