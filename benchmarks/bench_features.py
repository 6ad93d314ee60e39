"""Speed of CLIP feature extraction: single-scale against LGCLIP's multi-scale features.

    python benchmarks/bench_features.py                  # tiny kit + ViT-B/16 (random): ~2 min on a 2-core CPU
    python benchmarks/bench_features.py --no-full-size   # tiny kit only (seconds)

What is measured: images/s of `synthshot.features.extract.extract_features` over the same image
files (JPEGs of photo-like sizes, 320-512 px a side, written to a temporary folder), no cache, so
every run decodes, preprocesses and encodes every file:

    single  the encoder's own preprocessing (CLIPImageProcessor), 1 encoder input per image
    multi   LGCLIP: 10 crops per image (s/10 of the area, s = 1..10), resized and normalised, all
            crops of a batch in one forward, combined with weights s/55

Multi-scale does 10 encoder passes per image, so its cost can't be much below 10x single-scale;
the goal is that it stays within 12x, i.e. the crops add no hidden overhead. The `encode only`
column gives the ratio of the bare encoder forwards (a batch of B inputs against one of 10B) for
the same batch size: what the ratio would be if decoding and cropping cost nothing.

Models: (a) the tiny kit's CLIP (`synthshot.models.tiny.make_tiny_kit`, 32x32 input, loaded
through `load_image_encoder`): its encoder costs almost nothing, so this row measures the
per-image overhead of decoding and cropping; (b) a full-size ViT-B/16 `CLIPModel` (the vision
sizes of openai/clip-vit-base-patch16: 224 px, patch 16, width 768, 12 layers; projection 512)
with random weights and the default CLIPImageProcessor, which is what the ratio is about.

Timed runs alternate (single, multi, multi, single, ...) after one warm-up of each, so load
from other processes hits both alike; medians are reported. Nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch
from PIL import Image

GOAL_RATIO = 12.0  # multi-scale time per image at most this many times single-scale
SCALES = list(range(1, 11))


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Smooth random colour fields (they compress like photos) of photo-like sizes, as JPEG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        width, height = int(rng.integers(320, 513)), int(rng.integers(320, 513))
        coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        path = folder / f"image{i:04d}.jpg"
        image.save(path, quality=90)
        files.append(path)
    return files


def vit_b16_encoder(device: str):
    """A ViT-B/16 CLIPModel with random weights and the standard processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from synthshot.features.backends import TransformersImageEncoder
    from synthshot.models.clip import CLIPBundle

    config = CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 16,
        },
        projection_dim=512,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval().to(device)
    bundle = CLIPBundle(name="ViT-B/16 (random weights)", model=model, tokenizer=None, processor=CLIPImageProcessor())
    return TransformersImageEncoder(bundle)


def tiny_encoder(folder: Path, device: str):
    from synthshot.features.backends import load_image_encoder
    from synthshot.models.hub import HubOptions
    from synthshot.models.tiny import make_tiny_kit

    kit = make_tiny_kit(folder / "tiny-kit", seed=0)
    return load_image_encoder(str(kit / "clip"), HubOptions(offline=True), device=device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_extraction(encoder, files, multiscale: bool, batch_size: int, device: str) -> float:
    from synthshot.features.extract import extract_features

    synchronize(device)
    start = time.perf_counter()
    result = extract_features(
        encoder, files, multiscale=multiscale, scales=SCALES, batch_size=batch_size, progress=False
    )
    synchronize(device)
    elapsed = time.perf_counter() - start
    assert result.features.shape == (len(files), encoder.dim)
    return elapsed


def time_encoder(encoder, batch_size: int, device: str, repeats: int) -> tuple[float, float]:
    """Median seconds of a bare forward over B inputs and over 10B inputs (the encoder is warm)."""
    height, width = encoder.input_size
    out = []
    for count in (batch_size, batch_size * len(SCALES)):
        pixels = torch.randn(count, 3, height, width)
        samples = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            encoder.encode(pixels)
            synchronize(device)
            samples.append(time.perf_counter() - start)
        out.append(statistics.median(samples))
    return out[0], out[1]


def benchmark(name: str, encoder, files, batch_size: int, repeats: int, encode_repeats: int, device: str) -> dict:
    print(f"[{name}] warm-up ...", flush=True)
    time_extraction(encoder, files[:2], False, batch_size, device)
    time_extraction(encoder, files[:2], True, batch_size, device)
    samples: dict[str, list[float]] = {"single": [], "multi": []}
    for r in range(repeats):
        order = ("single", "multi") if r % 2 == 0 else ("multi", "single")
        for way in order:
            samples[way].append(time_extraction(encoder, files, way == "multi", batch_size, device))
            print(f"[{name}] {way:<6} {samples[way][-1]:.3f} s for {len(files)} images", flush=True)
    encode_single, encode_multi = time_encoder(encoder, batch_size, device, repeats=encode_repeats)
    single, multi = statistics.median(samples["single"]), statistics.median(samples["multi"])
    return {
        "name": name,
        "images": len(files),
        "batch_size": batch_size,
        "single_images_per_s": len(files) / single,
        "multi_images_per_s": len(files) / multi,
        "ratio": multi / single,
        "encode_only_ratio": encode_multi / encode_single,
        "samples_s": samples,
    }


def machine_line(device: str) -> str:
    from machine import machine_line as describe

    return describe(device)


def load_line() -> str:
    from machine import load_line as line

    return line()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True, help="also ViT-B/16")
    parser.add_argument("--images", type=int, default=None, help="images for ViT-B/16 (default 8 on CPU, 256 on CUDA)")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per forward for ViT-B/16 (4 on CPU, 32 on CUDA)"
    )
    parser.add_argument("--tiny-images", type=int, default=64, help="images for the tiny kit (default 64)")
    parser.add_argument("--tiny-batch", type=int, default=32, help="images per forward for the tiny kit (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per way (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    images = args.images or (256 if cuda else 8)
    batch = args.batch or (32 if cuda else 4)
    print(machine_line(device))
    print(load_line(), flush=True)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        tmp = Path(tmp)
        files = write_images(tmp / "images", max(images, args.tiny_images))
        results.append(
            benchmark(
                "tiny kit CLIP (32 px)",
                tiny_encoder(tmp, device),
                files[: args.tiny_images],
                args.tiny_batch,
                args.repeats + 1,
                5,
                device,
            )
        )
        if args.full_size:
            encoder = vit_b16_encoder(device)
            results.append(
                benchmark(
                    "ViT-B/16 random (224 px)", encoder, files[:images], batch, args.repeats, 3 if cuda else 1, device
                )
            )

    width = max(len(r["name"]) for r in results) + 2
    print("\n" + "=" * (width + 78))
    print(
        f"{'model':<{width}}{'images':>7}{'batch':>7}{'single img/s':>14}{'multi img/s':>13}"
        f"{'multi/single':>14}{'encode only':>13}"
    )
    for r in results:
        print(
            f"{r['name']:<{width}}{r['images']:>7}{r['batch_size']:>7}{r['single_images_per_s']:>14.2f}"
            f"{r['multi_images_per_s']:>13.2f}{r['ratio']:>13.2f}x{r['encode_only_ratio']:>12.2f}x"
        )
    goal_row = results[-1]
    met = "MET" if goal_row["ratio"] <= GOAL_RATIO else "NOT MET"
    print(
        f"goal (multi-scale within {GOAL_RATIO:g}x of single-scale, {goal_row['name']}): {met} ({goal_row['ratio']:.2f}x)"
    )
    print(f"wall time {time.perf_counter() - started:.0f} s; {load_line()}")
    if args.json:
        args.json.write_text(
            json.dumps({"device": device, "machine": machine_line(device), "results": results,
                        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
