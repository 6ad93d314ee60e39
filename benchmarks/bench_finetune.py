"""Speed of CLIP + LoRA fine-tuning steps (DIPSY / DataDream recipe), and what caching the class
text features saves, on the tiny kit's CLIP and on a full-size ViT-B/16 with random weights.

    python benchmarks/bench_finetune.py                 # defaults: about 2 minutes on a 2-core CPU
    python benchmarks/bench_finetune.py --quick         # fewer steps, fewer classes (about 1 minute)
    python benchmarks/bench_finetune.py --no-full-size  # tiny CLIP only (seconds)

What is measured: training images per second of synthshot's own step (`finetune.train_step`: one
forward of the real + synthetic images, the weighted loss of DIPSY Eq. 10, backward, AdamW, the
cosine schedule) on a model built by `finetune.build_classifier` (peft LoRA r=16, alpha 32, dropout
0.1 on q,k,v,out of every attention layer), under `accelerate` (bf16 autocast on CUDA, fp32 on the
CPU). Batches are random tensors already on the device: no image decoding or augmentation, so the
figure is the model's, not the data loader's. Three ways, the same images and labels:

    cached     LoRA on the vision tower; class text features computed once and reused (synthshot
               does this whenever the text tower is not adapted)
    uncached   the same LoRA, but the text features of all class prompts recomputed at every step
               (what a training loop that always calls the text tower does)
    text-lora  LoRA on both towers (DIPSY's setting): the text features must be recomputed, with
               their backward pass, at every step

Timed steps are interleaved (cached, uncached, text-lora, text-lora, uncached, cached, ...) so that
load from other processes hits all ways alike; the table reports the fastest step of each way (other
load on a shared machine only ever adds time) and the ratios. Models:

- tiny kit: `synthshot.models.tiny.make_tiny_kit` written to a temporary folder, loaded through
  `load_clip`, 32x32 images;
- full-size: a transformers `CLIPModel` built from ViT-B/16's configuration (openai/clip-vit-base-
  patch16: vision 12 x 768, patch 16, 224 px; text 12 x 512; projection 512; 150M parameters) with
  random weights, and the kit's byte-level tokenizer (prompts "a photo of a c<i>." are about 15
  tokens, close to what CLIP's BPE gives for real class names).

Nothing is hard-coded: every figure is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

WAYS = ("cached", "uncached", "text-lora")

# openai/clip-vit-base-patch16, config.json
VIT_B16_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "image_size": 224, "patch_size": 16, "projection_dim": 512}
VIT_B16_TEXT = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                "max_position_embeddings": 77, "projection_dim": 512}


def tiny_bundle(folder: Path):
    from synthshot.models.clip import load_clip
    from synthshot.models.hub import HubOptions
    from synthshot.models.tiny import make_tiny_kit

    kit = make_tiny_kit(folder / "kit")
    return lambda: load_clip(str(kit / "clip"), HubOptions(offline=True))


def full_size_bundle():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from synthshot.models.clip import CLIPBundle
    from synthshot.models.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    config = CLIPConfig(
        text_config={**VIT_B16_TEXT, "vocab_size": 49408, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1,
                     "pad_token_id": vocab - 1},
        vision_config=VIT_B16_VISION,
        projection_dim=512,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})

    def build():
        torch.manual_seed(0)
        return CLIPBundle(name="ViT-B/16 (random weights)", model=CLIPModel(config).eval(), tokenizer=tokenizer,
                          processor=processor)

    return build


def make_way(way: str, build, num_classes: int, accelerator):
    """A prepared (classifier, optimizer, scheduler) for one way."""
    from synthshot.classify.finetune import (
        CLIPClassifier,
        build_classifier,
        make_optimizer,
        make_scheduler,
    )
    from synthshot.classify.lora import LoraSettings

    bundle = build()
    towers = ("vision", "text") if way == "text-lora" else ("vision",)
    prompts = {f"c{i}": [f"a photo of a c{i}."] for i in range(num_classes)}
    classifier = build_classifier(bundle, LoraSettings(towers=towers), prompts, seed=0)
    if way == "uncached":  # same LoRA as `cached`, but the text tower runs at every step
        classifier = CLIPClassifier(classifier.peft_model, classifier.tokens, train_text=True)
    tokens = int(classifier.tokens.input_ids.shape[1])
    optimizer = make_optimizer(classifier, lr=1e-5, weight_decay=1e-4)
    classifier, optimizer = accelerator.prepare(classifier, optimizer)
    scheduler = make_scheduler(optimizer, total_steps=10_000, warmup_steps=0, lr=1e-5, min_lr=1e-8)
    return classifier, optimizer, scheduler, tokens


def random_batch(batch_size: int, size: int, num_classes: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    half = batch_size // 2

    def part():
        return torch.randn(half, 3, size, size, generator=g).to(device), torch.randint(0, num_classes, (half,),
                                                                                        generator=g).to(device)

    real, real_y = part()
    synth, synth_y = part()
    return {"real_pixels": real, "real_labels": real_y, "synthetic_pixels": synth, "synthetic_labels": synth_y}


def measure(name: str, build, *, size: int, batch_size: int, num_classes: int, steps: int, accelerator) -> dict:
    from synthshot.classify.finetune import train_step

    ways = {way: make_way(way, build, num_classes, accelerator) for way in WAYS}
    batch = random_batch(batch_size, size, num_classes, accelerator.device)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for way, (classifier, optimizer, scheduler, _) in ways.items():  # warm-up, untimed
        train_step(classifier, batch, 0.8, optimizer, scheduler, accelerator)
    sync()
    for step in range(steps):
        order = WAYS if step % 2 == 0 else WAYS[::-1]
        for way in order:
            classifier, optimizer, scheduler, _ = ways[way]
            start = time.perf_counter()
            train_step(classifier, batch, 0.8, optimizer, scheduler, accelerator)
            sync()
            times[way].append(time.perf_counter() - start)
    best = {way: min(t) for way, t in times.items()}
    tokens = next(iter(ways.values()))[3]
    del ways
    return {"model": name, "size": size, "batch": batch_size, "classes": num_classes, "prompt_tokens": tokens,
            "steps": steps, **{f"{way}_images_per_s": batch_size / best[way] for way in WAYS},
            "cached_vs_uncached": best["uncached"] / best["cached"],
            "cached_vs_text_lora": best["text-lora"] / best["cached"], "median_seconds": {
                way: statistics.median(t) for way, t in times.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and classes")
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--classes", type=int, default=None, help="class prompts (default 100, 50 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="full-size images per step (default 8 CPU, 256 CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed full-size steps per way (default 2 CPU)")
    parser.add_argument("--tiny-batch", type=int, default=32)
    parser.add_argument("--tiny-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    classes = args.classes or (50 if args.quick else 100)
    print(f"device: {accelerator.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, precision "
          f"{'bf16 autocast' if cuda else 'fp32'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure("tiny kit CLIP", tiny_bundle(Path(tmp)), size=32, batch_size=args.tiny_batch,
                            num_classes=classes, steps=args.tiny_steps or (10 if args.quick else 20),
                            accelerator=accelerator))
    if args.full_size:
        batch = args.batch or (256 if cuda else 8)
        steps = args.steps or (20 if cuda else (1 if args.quick else 2))
        rows.append(measure("ViT-B/16 (random)", full_size_bundle(), size=224, batch_size=batch, num_classes=classes,
                            steps=steps, accelerator=accelerator))

    header = (f"{'model':<18} {'batch':>5} {'classes':>7} {'tokens':>6} {'cached img/s':>12} {'uncached img/s':>14} "
              f"{'text-lora img/s':>15} {'cached/uncached':>15} {'cached/text-lora':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<18} {r['batch']:>5} {r['classes']:>7} {r['prompt_tokens']:>6} "
              f"{r['cached_images_per_s']:>12.2f} {r['uncached_images_per_s']:>14.2f} "
              f"{r['text-lora_images_per_s']:>15.2f} {r['cached_vs_uncached']:>14.2f}x {r['cached_vs_text_lora']:>15.2f}x")
    print("cached = LoRA on the vision tower, class text features computed once; uncached = the same, text tower "
          "run every step; text-lora = LoRA on both towers (DIPSY), text forward + backward every step. "
          "Fastest of interleaved timed steps; random tensors as images (no data loading).")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        args.json.write_text(json.dumps({"device": str(accelerator.device), "results": rows, "peak_cuda_gib": peak},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
