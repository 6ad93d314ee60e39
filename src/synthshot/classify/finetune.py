"""CLIP + LoRA fine-tuning on the few real images and the synthetic set (DIPSY section 4, the
DataDream recipe), resumable, and data-parallel under `accelerate launch`.

    logits = logit_scale · cos(image feature, class text feature)       (logit scale frozen)
    L      = λ·CE(real) + (1-λ)·CE(synthetic)                           (DIPSY Eq. 10, losses.py)

LoRA on the attention projections of the chosen CLIP towers (lora.py); when the text tower is not
adapted its class features are computed once and reused. AdamW with a linear warm-up and a cosine
decay to `min_lr`. A validation set, if given, chooses the epoch; the test set is evaluated once,
at the end, with the chosen adapter, and is never used to choose anything.

Files under `<output_dir>/finetune/`:

    checkpoints/epoch_<n>/   LoRA adapter (peft format, safetensors) + trainer state: optimizer
                             (safetensors), scheduler, epoch, step, data order, history (JSON).
                             Written to a temporary folder, then renamed: a checkpoint is whole or
                             absent, and the previous one stays until the new one is complete.
    adapter/                 the chosen adapter, for `evaluate` / `prototypes` (`lora.apply_adapter`)
    metrics.jsonl            training loss, learning rate, throughput, validation accuracy
    results.json             test (and validation) metrics of the chosen adapter, and the config
    tensorboard/             with finetune.tensorboard=true

Randomness: the LoRA init comes from `seed`; the order of epoch e and each image's augmentation
from (seed, e, position) (train_data.py); dropout from (seed, e, process). So a run resumed from
the checkpoint of epoch n continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthshot.classify.lora import LoraSettings
from synthshot.classify.losses import weighted_loss
from synthshot.classify.text import PromptTokens, encode_class_prompts, image_embeddings
from synthshot.errors import ConfigError, DataError, SynthshotError
from synthshot.io import (
    TEMP_PREFIX,
    append_jsonl,
    atomic_write_text,
    read_jsonl,
)

FINETUNE_DIR = "finetune"
CHECKPOINTS = "checkpoints"
ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.jsonl"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.safetensors"
STATE_FORMAT = "synthshot-finetune-1"
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# Settings a resumed run must share with the checkpoint, or it would not continue the same run.
RESUME_KEYS = ("lam", "lr", "min_lr", "weight_decay", "epochs", "warmup_steps", "steps_per_epoch", "batch_size",
               "augment", "crop_scale", "randaugment_ops", "randaugment_magnitude", "color_jitter_prob",
               "text_templates")


# ------------------------------------------------------------------------------------- model
class CLIPClassifier(nn.Module):
    """CLIP with LoRA as a classifier over fixed class prompts: logits [B, C] from pixels."""

    def __init__(self, peft_model, tokens: PromptTokens, train_text: bool):
        super().__init__()
        self.peft_model = peft_model
        self.train_text = train_text
        self.tokens = tokens
        self._text_cache: torch.Tensor | None = None

    @property
    def clip(self):
        return self.peft_model.base_model.model

    def class_features(self) -> torch.Tensor:
        """Normalised class text features [C, D]: recomputed under autograd when the text tower
        is adapted, else computed once (fp32, no gradient) and kept."""
        device = self.clip.logit_scale.device
        if self.tokens.input_ids.device != device:
            self.tokens = self.tokens.to(device)
        if self.train_text:
            return encode_class_prompts(self.clip, self.tokens)
        if self._text_cache is None or self._text_cache.device != device:
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                self._text_cache = encode_class_prompts(self.clip, self.tokens)
        return self._text_cache

    def forward(self, pixel_values: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.class_features() if text_features is None else text_features
        image = F.normalize(image_embeddings(self.clip, pixel_values).float(), dim=-1)
        return self.clip.logit_scale.detach().exp().float() * image @ text.float().t()


def build_classifier(bundle, lora: LoraSettings, prompts: dict[str, list[str]], *, seed: int = 0,
                     gradient_checkpointing: bool = False) -> CLIPClassifier:
    """LoRA on `bundle.model` (changed in place) and the classifier over the class prompts."""
    from synthshot.classify.lora import add_lora
    from synthshot.classify.text import tokenize_prompts

    torch.manual_seed(seed)  # the LoRA A matrices are drawn here
    peft_model = add_lora(bundle.model, lora)
    if gradient_checkpointing:
        peft_model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return CLIPClassifier(peft_model, tokenize_prompts(bundle.tokenizer, prompts), train_text="text" in lora.towers)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warm-up to 1 over
    `warmup_steps`, then a cosine from 1 down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(classifier: CLIPClassifier, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in classifier.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float):
    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, min_lr / lr)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(classifier, batch: dict, lam: float, optimizer, scheduler, accelerator) -> torch.Tensor:
    """One optimizer step on a batch of real and synthetic images, in one forward pass."""
    real, synthetic = batch["real_pixels"], batch["synthetic_pixels"]
    num_real = real.shape[0] if real.numel() else 0
    pixels = torch.cat([p for p in (real, synthetic) if p.numel()])
    logits = classifier(pixels)
    loss = weighted_loss(
        logits[:num_real] if num_real else None, batch["real_labels"] if num_real else None,
        logits[num_real:] if synthetic.numel() else None, batch["synthetic_labels"] if synthetic.numel() else None,
        lam,
    )
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_epoch(classifier, loader, optimizer, scheduler, accelerator, lam: float, *, epoch: int, first_step: int,
                log_every: int, log, bar) -> dict:
    """One pass over the prepared loader; every `log_every` steps and at the end of the epoch,
    `log(epoch, step, loss, images/s)`. Returns the epoch's mean loss (over all processes) and
    throughput."""
    classifier.train()
    losses, images, rate, started = [], 0, 0.0, time.perf_counter()
    for step, batch in enumerate(loader, start=first_step + 1):
        loss = train_step(classifier, batch, lam, optimizer, scheduler, accelerator)
        losses.append(loss)
        images += (batch["real_labels"].numel() + batch["synthetic_labels"].numel()) * accelerator.num_processes
        bar.update(1)
        if step % log_every == 0 or len(losses) == len(loader):
            # Reading the loss waits for the device: only at logging steps.
            rate = images / max(time.perf_counter() - started, 1e-9)
            log(epoch, step, float(loss), rate)
            bar.set_postfix(loss=f"{float(loss):.4f}", img_s=f"{rate:.1f}")
    bar.close()
    rate = images / max(time.perf_counter() - started, 1e-9)
    mean = float(accelerator.reduce(torch.stack(losses).mean(), reduction="mean"))
    return {"epoch": epoch, "loss": mean, "images_per_s": rate, "seconds": time.perf_counter() - started}


@torch.no_grad()
def predict(classifier, loader, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels of every image of a prepared loader, gathered from all processes."""
    model = accelerator.unwrap_model(classifier)
    was_training = model.training
    model.eval()
    with accelerator.autocast():
        text = model.class_features()
    predictions, targets = [], []
    for pixels, labels in loader:
        logits = classifier(pixels, text)
        found, true = accelerator.gather_for_metrics((logits.argmax(dim=-1), labels))
        predictions.append(found.cpu())
        targets.append(true.cpu())
    model.train(was_training)
    return torch.cat(predictions).numpy(), torch.cat(targets).numpy()


# ------------------------------------------------------------------------------------ recipe
def finetune(config, *, resume: bool = False, echo=print, progress: bool = True) -> dict:
    """Fine-tune CLIP with LoRA on the run's few-shot split and synthetic set; return the
    results dict (also written to `<output_dir>/finetune/results.json`)."""
    from synthshot.classify.lora import check_adapter, model_probe
    from synthshot.classify.metrics import classification_metrics
    from synthshot.classify.text import class_prompts, class_templates
    from synthshot.classify.train_data import (
        AugmentSettings,
        PairedImages,
        TrainImages,
        TrainTransform,
        check_training_sets,
        collate_pairs,
        real_images,
        synthetic_images,
        worker_count,
    )
    from synthshot.config import write_resolved_config
    from synthshot.models.clip import load_clip
    from synthshot.results import make_results, write_results
    from synthshot.stages import dataset_name, hub_options, prepare_data, resolve_models

    # 1. Resolve the models, the process group, the few-shot split and the output folder.
    config = resolve_models(config)
    settings = config.finetune
    out = config.output_dir / FINETUNE_DIR
    accelerator, precision_note = make_accelerator(config)
    main = accelerator.is_main_process
    say = echo if main else (lambda *_: None)
    if precision_note:
        say(precision_note)
    data = prepare_data(config, echo=lambda *_: None)
    classes = list(data.split)
    if main:
        _remove_stale_temporaries(out / CHECKPOINTS)
    checkpoint = find_resume_checkpoint(out, resume)
    writer = _tensorboard(out, settings.tensorboard) if main else None

    # 2. Training images: the real shots and the synthetic set, checked against each other.
    real = real_images(data.split, classes) if settings.lam > 0 else TrainImages()
    synthetic = synthetic_images(config.output_dir, classes) if settings.lam < 1 else TrainImages()
    check_training_sets(real, synthetic, classes, settings.lam, config.output_dir)

    # 3. Evaluation images: validation (chooses the epoch) and test (reported only), disjoint.
    val_images, test_images = evaluation_sets(config, data)

    # 4. CLIP; a checkpoint to resume from must fit it, the LoRA settings, the run's settings and data.
    bundle = load_clip(config.models.clip, hub_options(config), device="cpu")
    base_probe = model_probe(bundle.model)
    lora = LoraSettings.from_config(settings)
    fingerprint = data_fingerprint(real, synthetic, classes)
    if checkpoint is not None:
        check_adapter(checkpoint, bundle.model, settings=lora)
        state = read_trainer_state(checkpoint)
        check_resumable(checkpoint, state, settings, fingerprint, accelerator.num_processes)

    # 5. LoRA and the text side: class prompts from the registry's templates.
    templates = class_templates(config.data.dataset, settings.text_templates)
    prompts = class_prompts(data.class_names, templates)
    classifier = build_classifier(bundle, lora, prompts, seed=config.seed,
                                  gradient_checkpointing=settings.gradient_checkpointing)

    # 6. Batches (half real, half synthetic), optimizer, schedule; all prepared by accelerate.
    both = len(real) > 0 and len(synthetic) > 0
    pairs_per_batch = settings.batch_size // 2 if both else settings.batch_size
    limit = settings.steps_per_epoch * pairs_per_batch * accelerator.num_processes if settings.steps_per_epoch else None
    augment = AugmentSettings.from_config(settings) if settings.augment else None
    dataset = PairedImages(real, synthetic, TrainTransform(bundle.processor, augment), seed=config.seed, limit=limit)
    workers = worker_count(settings.num_workers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=pairs_per_batch, shuffle=False, num_workers=workers,
                                         collate_fn=collate_pairs)
    optimizer = make_optimizer(classifier, settings.lr, settings.weight_decay)
    classifier, optimizer, loader = accelerator.prepare(classifier, optimizer, loader)
    eval_loaders = {name: accelerator.prepare(_eval_loader(images, bundle.processor, settings.eval_batch_size, workers))
                    for name, images in (("val", val_images), ("test", test_images)) if images is not None}
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = make_scheduler(optimizer, total_steps, settings.warmup_steps, settings.lr, settings.min_lr)
    peft_model = accelerator.unwrap_model(classifier).peft_model
    info = _adapter_info(config, bundle.name, base_probe, lora, classes, prompts)
    say(f"fine-tuning {config.models.clip} with LoRA r={lora.r} on {'+'.join(lora.towers)}: {len(real)} real and "
        f"{len(synthetic)} synthetic images of {len(classes)} classes, lam={settings.lam:g}; {settings.epochs} epoch(s) "
        f"of {steps_per_epoch} step(s), batch {settings.batch_size} x {accelerator.num_processes} process(es)")
    if settings.warmup_steps >= total_steps:
        say(f"note: the warm-up ({settings.warmup_steps} steps) is not shorter than training ({total_steps} steps), "
            "so the learning rate never reaches finetune.lr")

    start_epoch, history, global_step = 0, [], 0
    if checkpoint is not None:
        start_epoch, history, global_step = restore_checkpoint(checkpoint, state, peft_model, optimizer, scheduler,
                                                               accelerator)
        say(f"resuming from {checkpoint} (epoch {start_epoch} of {settings.epochs} done)")
    if main:
        _trim_metrics(out / METRICS_FILE, start_epoch)
        write_resolved_config(config, out)

    def log_step(epoch: int, step: int, loss: float, rate: float) -> None:
        if main:
            record = {"kind": "step", "epoch": epoch, "step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                      "images_per_s": rate}
            append_jsonl(out / METRICS_FILE, record)
            for key in ("loss", "lr", "images_per_s") if writer is not None else ():
                writer.add_scalar(f"train/{key}", record[key], step)

    # 7. Train: each epoch ends with validation and an atomic checkpoint.
    for epoch in range(start_epoch, settings.epochs):
        torch.manual_seed(_derive_seed(config.seed, epoch, accelerator.process_index))  # dropout
        loader.set_epoch(epoch)  # the dataset's order and augmentation for this epoch
        entry = train_epoch(classifier, loader, optimizer, scheduler, accelerator, settings.lam, epoch=epoch + 1,
                            first_step=global_step, log_every=settings.log_every, log=log_step,
                            bar=_progress(steps_per_epoch, f"epoch {epoch + 1}/{settings.epochs}", progress and main))
        global_step += steps_per_epoch
        if "val" in eval_loaders:
            found, true = predict(classifier, eval_loaders["val"], accelerator)
            val_metrics = classification_metrics(true, found, classes)
            entry.update(val_top1=val_metrics["top1"], val_balanced_top1=val_metrics["balanced_top1"])
        history.append(entry)
        if main:
            append_jsonl(out / METRICS_FILE, {"kind": "epoch", **entry})
            for key in ("loss", "val_top1") if writer is not None else ():
                if key in entry:
                    writer.add_scalar(f"epoch/{key}", entry[key], epoch + 1)
            folder = out / CHECKPOINTS / f"epoch_{epoch + 1}"
            state = trainer_state(epoch + 1, global_step, history, settings, fingerprint, optimizer, scheduler,
                                  accelerator, steps_per_epoch, pairs_per_batch)
            save_checkpoint(folder, peft_model, info, state, optimizer)
            _prune_checkpoints(out / CHECKPOINTS, keep={epoch + 1, select_epoch(history)})
        accelerator.wait_for_everyone()
        val_text = f", val top-1 {entry['val_top1']:.4f}" if "val_top1" in entry else ""
        say(f"epoch {epoch + 1}/{settings.epochs}: loss {entry['loss']:.4f}{val_text}, "
            f"{entry['images_per_s']:.1f} images/s")

    # 8. The chosen adapter: best validation accuracy (earliest on ties), else the last epoch.
    chosen = select_epoch(history) if history else settings.epochs
    if chosen != settings.epochs:
        from synthshot.classify.lora import load_adapter_weights

        load_adapter_weights(peft_model, out / CHECKPOINTS / f"epoch_{chosen}")
    if main:
        save_adapter_folder(out / ADAPTER_DIR, peft_model, {**info, "epoch": chosen})
    accelerator.wait_for_everyone()

    # 9. Evaluate the chosen adapter: test once (and validation, to report it); write results.json.
    entries = []
    params = _result_params(settings, lora, chosen, total_steps, real, synthetic, templates, out / ADAPTER_DIR)
    selected_on = "val" if val_images is not None else None
    for split in ("test", "val"):
        if split not in eval_loaders:
            continue
        found, true = predict(classifier, eval_loaders[split], accelerator)
        metrics = classification_metrics(true, found, classes)
        source = test_images.source if split == "test" else val_images.source
        entries.append({"method": "finetune", "split": split, "params": {**params, "source": source},
                        "selected_on": selected_on, "metrics": metrics})
    run = {"name": config.output_dir.name, "dataset": dataset_name(config), "shots": config.data.shots,
           "images_per_class": round(len(synthetic) / len(classes)), "backbone": config.models.clip}
    results = make_results("finetune", entries, run=run, config=config.model_dump(mode="json"))
    if main:
        path = write_results(out, results)
        if writer is not None:
            writer.close()
        say(f"test top-1 {entries[0]['metrics']['top1']:.4f} on {entries[0]['metrics']['num_images']} images "
            f"(adapter of epoch {chosen}{', chosen on val' if selected_on else ''}) -> {path}")
    accelerator.wait_for_everyone()
    return results


# ------------------------------------------------------------------------------ the helpers
def make_accelerator(config):
    """An `Accelerator` for the configured device and precision, and a note when the precision
    asked for is not used: half precision only where the device runs it (fp32 on the CPU; bf16
    falls back to fp16 on GPUs without it)."""
    from accelerate import Accelerator

    from synthshot.models.hub import resolve_device

    device = resolve_device(config.device)
    precision = config.finetune.precision
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[precision]
    note = None
    if not device.startswith("cuda"):
        if mixed != "no":
            note = f"finetune.precision={precision} is not used on {device}: training in fp32"
        mixed = "no"
    elif mixed == "bf16" and not torch.cuda.is_bf16_supported():
        note = "finetune.precision=bf16 is not supported by this GPU: training in fp16 mixed precision"
        mixed = "fp16"
    if device.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        torch.cuda.set_device(torch.device(device))
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed), note


def evaluation_sets(config, data):
    """(validation, test) labelled images: held out from the few-shot split, and disjoint from
    each other, so that what chooses the epoch never overlaps what reports the accuracy."""
    from synthshot.data.labelled import load_labelled_images
    from synthshot.stages import data_root, resolve_eval_source

    settings = config.finetune
    classes = list(data.split)
    exclude = {Path(p).resolve() for files in data.split.values() for p in files}
    root = data_root(config) if (config.data.root is not None or config.data.demo is not None) else None
    load = {"data_root": root, "exclude": exclude, "seed": config.seed}
    test = load_labelled_images(resolve_eval_source(config, settings.test), classes, data.class_names, **load)
    if settings.val is None:
        return None, test
    val = load_labelled_images(resolve_eval_source(config, settings.val), classes, data.class_names, **load)
    shared = {p.resolve() for p in val.files} & {p.resolve() for p in test.files}
    if shared:
        raise ConfigError(
            f"finetune.val and finetune.test share {len(shared)} image(s) (e.g. {min(shared)}): choosing the "
            "epoch on test images is not honest; give validation images of their own (source folder or coop split=val)"
        )
    return val, test


def _eval_loader(images, processor, batch_size: int, workers: int):
    from synthshot.classify.train_data import ProcessedImages

    return torch.utils.data.DataLoader(ProcessedImages(images.files, images.labels, processor),
                                       batch_size=batch_size, shuffle=False, num_workers=workers)


def select_epoch(history: list[dict]) -> int:
    """The epoch whose adapter is kept: best validation top-1 (the earliest on ties), or the last."""
    scored = [h for h in history if "val_top1" in h]
    if not scored:
        return history[-1]["epoch"]
    return max(scored, key=lambda h: (h["val_top1"], -h["epoch"]))["epoch"]


def data_fingerprint(real, synthetic, classes: list[str]) -> dict:
    """What fixes the data order: the classes and the files of both sets, in order."""
    def digest(images) -> str:
        text = "\n".join(f"{label}\t{Path(path).resolve()}" for path, label in zip(images.files, images.labels))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    return {"classes": list(classes), "num_real": len(real), "num_synthetic": len(synthetic),
            "real": digest(real), "synthetic": digest(synthetic)}


def _derive_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _adapter_info(config, model_name, base_probe, lora, classes, prompts) -> dict:
    from synthshot.classify.lora import adapter_info

    return adapter_info(config.models.clip or model_name, base_probe, lora, classes, prompts)


def _result_params(settings, lora, chosen, total_steps, real, synthetic, templates, adapter) -> dict:
    return {
        "lam": settings.lam, "epochs": settings.epochs, "selected_epoch": chosen, "steps": total_steps,
        "lora_r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "lora_targets": list(lora.targets), "towers": list(lora.towers), "lr": settings.lr, "min_lr": settings.min_lr,
        "weight_decay": settings.weight_decay, "batch_size": settings.batch_size, "augment": settings.augment,
        "num_real": len(real), "num_synthetic": len(synthetic), "templates": templates, "adapter": str(adapter),
    }


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("finetune.tensorboard=true needs the tensorboard package: `pip install tensorboard`, "
                          "or set finetune.tensorboard=false (metrics.jsonl is written either way)") from None
    return SummaryWriter(str(out / "tensorboard"))


def _trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop the lines of epochs after the checkpoint resumed from (a killed epoch's partial log)."""
    records, corrupt = read_jsonl(path)
    kept = [r for r in records if int(r.get("epoch", 0)) <= epochs_done]
    if len(kept) != len(records) or corrupt:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in kept))


# -------------------------------------------------------------------------------- checkpoints
def trainer_state(epoch, global_step, history, settings, fingerprint, optimizer, scheduler, accelerator,
                  steps_per_epoch, pairs_per_batch) -> dict:
    """Everything besides the weights that a resumed run needs to continue identically."""
    scaler = getattr(accelerator, "scaler", None)
    return {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "global_step": global_step,
        "history": history,
        "settings": {key: _jsonable(getattr(settings, key)) for key in RESUME_KEYS},
        "num_processes": accelerator.num_processes,
        "data": fingerprint,
        "data_order": {"steps_per_epoch": steps_per_epoch, "pairs_per_batch": pairs_per_batch,
                       "rule": "epoch e: train_data.epoch_plan(num_real, num_synthetic, e, seed)"},
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "optimizer_groups": optimizer.state_dict()["param_groups"],
        "scaler": scaler.state_dict() if scaler is not None else None,
    }


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _optimizer_tensors(optimizer) -> dict[str, torch.Tensor]:
    return {f"{index}.{key}": value.detach().cpu().contiguous()
            for index, slots in optimizer.state_dict()["state"].items()
            for key, value in slots.items() if torch.is_tensor(value)}


def write_trainer_state(folder: Path, state: dict, optimizer) -> None:
    from safetensors.torch import save_file

    save_file(_optimizer_tensors(optimizer), str(folder / OPTIMIZER_STATE))
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def save_checkpoint(folder: Path, peft_model, info: dict, state: dict, optimizer) -> None:
    """Write adapter + trainer state into a temporary folder, then rename it to `folder`: a
    failure (a full disk) leaves the previous checkpoints as they were."""
    def write(tmp: Path) -> None:
        from synthshot.classify.lora import save_adapter

        save_adapter(peft_model, tmp, {**info, "epoch": state["epoch"]})
        write_trainer_state(tmp, state, optimizer)

    _write_folder_atomically(folder, write, what=f"checkpoint {folder.name}")


def save_adapter_folder(folder: Path, peft_model, info: dict) -> None:
    from synthshot.classify.lora import save_adapter

    _write_folder_atomically(folder, lambda tmp: save_adapter(peft_model, tmp, info), what="the adapter")


def _write_folder_atomically(folder: Path, write, what: str) -> None:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{TEMP_PREFIX}{folder.name}-{os.getpid()}"
    old = folder.parent / f"{TEMP_PREFIX}{folder.name}-old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        _fsync_tree(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        if exc.errno in DISK_FULL:
            raise SynthshotError(
                f"the disk is full while saving {what} to {folder}: the earlier checkpoints are intact; free some "
                "space and rerun with --resume"
            ) from exc
        raise SynthshotError(f"cannot save {what} to {folder}: {exc.strerror or exc}; rerun with --resume") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(folder: Path) -> None:
    """Folders a killed save left behind (never a finished checkpoint)."""
    if folder.is_dir():
        for path in folder.glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _checkpoint_epochs(folder: Path) -> dict[int, Path]:
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            # A checkpoint counts once its trainer state is there (the folder appears whole, by rename).
            if path.name.startswith("epoch_") and path.name[6:].isdigit() and (path / TRAINER_STATE).is_file():
                found[int(path.name[6:])] = path
    return found


def _prune_checkpoints(folder: Path, keep: set[int]) -> None:
    for epoch, path in _checkpoint_epochs(folder).items():
        if epoch not in keep:
            shutil.rmtree(path, ignore_errors=True)


def find_resume_checkpoint(out: Path, resume: bool) -> Path | None:
    """The last checkpoint when resuming; without --resume, existing checkpoints are an error
    rather than silently overwritten."""
    found = _checkpoint_epochs(out / CHECKPOINTS)
    if not resume:
        if found:
            raise ConfigError(
                f"{out} holds checkpoints of an earlier fine-tuning run (up to epoch {max(found)}): pass --resume "
                "to continue it, or delete the folder (or choose another output_dir) to start again"
            )
        return None
    return found[max(found)] if found else None


def read_trainer_state(folder: Path) -> dict:
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / TRAINER_STATE} cannot be read ({exc}): delete {folder} to resume from the "
                        "checkpoint before it") from None
    if state.get("format") != STATE_FORMAT:
        raise DataError(f"{folder / TRAINER_STATE} has format {state.get('format')!r}, not {STATE_FORMAT!r}: it was "
                        "written by another version of synthshot; start a new output folder")
    return state


def check_resumable(folder: Path, state: dict, settings, fingerprint: dict, num_processes: int) -> None:
    """Refuse to resume when the run would not continue the same training."""
    saved = state["settings"]
    changed = [f"{key}={saved.get(key)!r} then, {_jsonable(getattr(settings, key))!r} now"
               for key in RESUME_KEYS if saved.get(key) != _jsonable(getattr(settings, key))]
    if changed:
        raise ConfigError(f"cannot resume from {folder}: finetune settings changed ({'; '.join(changed)}): restore "
                          "them, or start a new output folder")
    if state["num_processes"] != num_processes:
        raise ConfigError(f"cannot resume from {folder}: it was trained on {state['num_processes']} process(es), this "
                          f"run has {num_processes}; the batches would differ: launch as many processes")
    old = state["data"]
    if old != fingerprint:
        what = [f"{key} {old.get(key)} then, {fingerprint[key]} now" for key in ("num_real", "num_synthetic")
                if old.get(key) != fingerprint[key]] or ["the same counts but other files or classes"]
        raise DataError(f"cannot resume from {folder}: the training images changed ({'; '.join(what)}), so the data "
                        "order would too: restore them, or start a new output folder")


def restore_checkpoint(folder: Path, state: dict, peft_model, optimizer, scheduler, accelerator):
    """Load the adapter weights, optimizer, scheduler and scaler state of a checkpoint; return
    (epochs done, history, optimizer steps done)."""
    from safetensors.torch import load_file

    from synthshot.classify.lora import load_adapter_weights

    load_adapter_weights(peft_model, folder)
    tensors = load_file(str(folder / OPTIMIZER_STATE))
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["optimizer_groups"]})
    scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state["epoch"], list(state["history"]), state["global_step"]
