"""CLIP + LoRA fine-tuning on the few real images and the synthetic set (DIPSY section 4, the
DataDream recipe), resumable, and data-parallel under `accelerate launch`: the model, the
training loop and the checkpoint I/O. The `finetune` stage (`synthshot/stages/finetune.py`)
gathers the data and runs them.

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
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthshot.classify.lora import LoraSettings
from synthshot.classify.losses import weighted_loss

# peft asks every model it wraps for `is_gradient_checkpointing`, which transformers 5 deprecates
# with a FutureWarning in every fine-tuning run; nothing here uses the old name. Only that message.
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
from synthshot.classify.text import PromptTokens, encode_class_prompts, image_embeddings
from synthshot.errors import ConfigError, DataError, SynthshotError
from synthshot.io import (
    TEMP_PREFIX,
    atomic_write_text,
    load_safetensors,
    parse_json,
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
RESUME_KEYS = ("lam", "lr", "min_lr", "weight_decay", "epochs", "warmup_steps", "steps_per_epoch", "iterations",
               "iterations_per_shot", "batch_size", "augment", "crop_scale", "randaugment_ops",
               "randaugment_magnitude", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob",
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
def predict(classifier, loader, accelerator, bar=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true labels of every image of a prepared loader, gathered from all processes;
    `bar` (a `progress_bar`) advances by one per batch and is closed at the end."""
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
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return torch.cat(predictions).numpy(), torch.cat(targets).numpy()


# ------------------------------------------------------------------------------ the helpers
def make_accelerator(device: str, precision: str):
    """An `Accelerator` for `device` and `precision`, and a note when the precision asked for is
    not used: half precision only where the device runs it (fp32 on the CPU; bf16 falls back to
    fp16 on GPUs without it)."""
    from accelerate import Accelerator

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


def eval_loader(images, processor, batch_size: int, workers: int):
    from synthshot.classify.train_data import ProcessedImages

    return torch.utils.data.DataLoader(ProcessedImages(images.files, images.labels, processor),
                                       batch_size=batch_size, shuffle=False, num_workers=workers)


def select_epoch(history: list[dict], select: str = "val") -> int:
    """The epoch whose adapter is kept: with `select="val"` the best validation top-1 (the
    earliest on ties), the last when there is no validation; with `select="last"` the last. Test
    data never chooses."""
    scored = [h for h in history if "val_top1" in h]
    if select == "last" or not scored:
        return history[-1]["epoch"]
    return max(scored, key=lambda h: (h["val_top1"], -h["epoch"]))["epoch"]


def data_fingerprint(real, synthetic, classes: list[str]) -> dict:
    """What fixes the data order: the classes and the files of both sets, in order (by their last
    two path parts, so that a moved or copied run still resumes)."""
    def digest(images) -> str:
        text = "\n".join(f"{label}\t{Path(path).parent.name}/{Path(path).name}"
                         for path, label in zip(images.files, images.labels))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    return {"classes": list(classes), "num_real": len(real), "num_synthetic": len(synthetic),
            "real": digest(real), "synthetic": digest(synthetic)}


def derive_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def result_params(settings, lora, chosen, total_steps, real, synthetic, templates, adapter) -> dict:
    return {
        "recipe": settings.recipe, "lam": settings.lam, "epochs": settings.epochs, "selected_epoch": chosen,
        "select": settings.select, "steps": total_steps,
        "lora_r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "lora_targets": list(lora.targets), "towers": list(lora.towers), "lr": settings.lr, "min_lr": settings.min_lr,
        "weight_decay": settings.weight_decay, "batch_size": settings.batch_size, "augment": settings.augment,
        "num_real": len(real), "num_synthetic": len(synthetic), "templates": templates, "adapter": str(adapter),
    }


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "step"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


class Trackers:
    """The fine-tuning curves and results sent to experiment trackers through accelerate's tracker
    classes (TensorBoard in `<finetune>/trackers`, Weights & Biases), main process only. Without
    trackers every call does nothing; metrics.jsonl is written either way."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, values: dict, step: int | None = None) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def make_trackers(names: list[str], out: Path, run_name: str, config: dict) -> Trackers:
    """Start the trackers named in `finetune.trackers`; a tracker whose package is missing is a
    one-line error naming the package to install."""
    import importlib.util

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = []
    for name in dict.fromkeys(names):
        if not any(importlib.util.find_spec(package) for package in TRACKER_PACKAGES[name]):
            raise ConfigError(f"finetune.trackers names {name}, whose package is not installed: pip install "
                              f"{TRACKER_PACKAGES[name][0]} (or pip install 'synthshot[{name}]'), or remove it")
        cls = LOGGER_TYPE_TO_CLASS[name]
        tracker = cls(run_name, logging_dir=str(out / "trackers")) if name == "tensorboard" else cls(run_name)
        if hasattr(tracker, "start"):
            tracker.start()
        tracker.store_init_configuration(_flat(config))
        trackers.append(tracker)
    return Trackers(trackers)


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b": value} with scalar values (what trackers store as hyper-parameters)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
    return flat


def trim_metrics(path: Path, epochs_done: int) -> None:
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


def remove_partial_checkpoints(folder: Path) -> None:
    """Folders a killed save left behind (never a finished checkpoint)."""
    if folder.is_dir():
        for path in folder.glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def checkpoint_epochs(folder: Path) -> dict[int, Path]:
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            # A checkpoint counts once its trainer state is there (the folder appears whole, by rename).
            if path.name.startswith("epoch_") and path.name[6:].isdigit() and (path / TRAINER_STATE).is_file():
                found[int(path.name[6:])] = path
    return found


def prune_checkpoints(folder: Path, keep: set[int]) -> None:
    for epoch, path in checkpoint_epochs(folder).items():
        if epoch not in keep:
            shutil.rmtree(path, ignore_errors=True)


def last_checkpoint(out: Path) -> Path | None:
    """The checkpoint of the last finished epoch under `out`, if any."""
    found = checkpoint_epochs(out / CHECKPOINTS)
    return found[max(found)] if found else None


def move_aside(out: Path, previous: Path) -> Path | None:
    """Move everything of an earlier fine-tuning run in `out` (checkpoints, adapter, metrics,
    results) into a new folder under `previous`; return it (None when there was nothing)."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    previous.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = previous / f"{out.name}-{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = previous / f"{out.name}-{stamp}-{suffix}"
    os.replace(out, target)
    _fsync_dir(out.parent)
    return target


def read_trainer_state(folder: Path) -> dict:
    try:
        state = parse_json((folder / TRAINER_STATE).read_text(encoding="utf-8"))
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
                          "them, or run without --resume to train anew (the old checkpoints are moved aside)")
    if state["num_processes"] != num_processes:
        raise ConfigError(f"cannot resume from {folder}: it was trained on {state['num_processes']} process(es), this "
                          f"run has {num_processes}; the batches would differ: launch as many processes, or run "
                          "without --resume to train anew")
    old = state["data"]
    if old != fingerprint:
        what = [f"{key} {old.get(key)} then, {fingerprint[key]} now" for key in ("num_real", "num_synthetic")
                if old.get(key) != fingerprint[key]] or ["the same counts but other files or classes"]
        raise DataError(f"cannot resume from {folder}: the training images changed ({'; '.join(what)}), so the data "
                        "order would too: restore them, or run without --resume to train anew")


def restore_checkpoint(folder: Path, state: dict, peft_model, optimizer, scheduler, accelerator):
    """Load the adapter weights, optimizer, scheduler and scaler state of a checkpoint; return
    (epochs done, history, optimizer steps done)."""
    from synthshot.classify.lora import load_adapter_weights

    remedy = f"delete {folder} to resume from the checkpoint before it, or run with --restart"
    load_adapter_weights(peft_model, folder, remedy=remedy)
    tensors = load_safetensors(folder / OPTIMIZER_STATE, remedy)
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
