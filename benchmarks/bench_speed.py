"""Per-image cost of generation's speed options against today's default, side by side, on a
full-size Stable Diffusion 1.5 U-Net with random weights.

    python benchmarks/bench_speed.py                # CPU: 32x32 latents, 10 steps, 3 repeats (~10 min, 2 cores)
    python benchmarks/bench_speed.py --quick        # 16x16 latents, 6 steps, 1 repeat (~1 min)
    python benchmarks/bench_speed.py --steps 50 --batch 1 8 --compile   # the GPU check (device_check.sh)

What is measured: seconds per image of `DualIPAdapterPipeline.__call__` in dual mode (DIPSY Eq. 9,
DPM-Solver++), with `output_type="latent"`: text and image encoding (cheap stand-ins, see below)
and the whole denoising loop, without the VAE decode, which every way does alike. The ways, all
at the same number of steps as the default:

    default          every step runs the four branches in one U-Net call (today's behaviour)
    interval         image_guidance_interval [0.25, 0.75]: the image branches on the middle half of
                     the steps, only [uncond, text] on the rest (Kynkaanniemi et al. 2024)
    cache            cache_interval 3: DeepCache, the whole U-Net every 3rd step, the shallow path
                     in between
    interval+cache   both
    compiled         (--compile) the default way through torch.compile (compiled in the warm-up)

For each way the exact number of U-Net evaluations per image is printed (full: whole-U-Net rows;
shallow: DeepCache rows), from `guidance.step_plan` and checked against a count of the rows that
actually went through the U-Net in the warm-up. The `latents vs default` column is the largest
difference of the final latents from the default way's, relative to their largest magnitude:
what the option changes (0 for compile up to float rounding).

Models: SD-1.5's U-Net built from its real configuration with random weights and two
ip-adapter-plus adapters of the real shape (`bench_generation.build_full_size_unet`); the text
encoder is a 1-layer CLIP text model of width 768 and the image encoder a 1-layer ViT of width
1280 at 224 px, so the adapters' resamplers see features of the real shape [257, 1280]. They run
once per image, outside the loop, in every way alike.

Timed calls are interleaved (the order reversed every repeat) after one warm-up call per way (4
steps), so load from other processes hits every way alike; the table reports the fastest call of each way
(on a shared machine the one least disturbed by other load) and, beside it, the ratio of the medians. Nothing is hard-coded:
every figure is measured in this run. On CUDA the script runs in fp16 and reports peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch
from PIL import Image

INTERVAL = (0.25, 0.75)  # the middle half of the trajectory
CACHE = 3
# CPU goals of the project, per image at equal steps against the default.
GOALS = {"interval": 1.3, "cache": 1.8, "interval+cache": 2.5}
GUIDANCE = {"w_text": 7.5, "w_pos": 6.0, "w_neg": 6.0, "ip_adapter_scale": 0.6}  # DIPSY's


@dataclass
class Way:
    key: str  # default, interval, cache, interval+cache, compiled
    name: str
    options: dict
    compiled: bool = False
    seconds: dict[int, list[float]] = field(default_factory=dict)  # batch -> seconds per image, each repeat
    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    peak_gib: dict[int, float] = field(default_factory=dict)
    evaluations: dict[str, int] = field(default_factory=dict)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))


def build_pipeline(device: torch.device, dtype):
    """`DualIPAdapterPipeline` around the full-size U-Net with cheap stand-in encoders."""
    from bench_generation import PLUS_ADAPTER, build_full_size_unet
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from synthshot.generation.pipeline import DualIPAdapterPipeline
    from synthshot.models.tiny import SD15_SCHEDULER, make_tokenizer

    unet = build_full_size_unet(device, dtype)
    tokenizer = make_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(5)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=768, num_hidden_layers=1, num_attention_heads=12,
        max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    ))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=PLUS_ADAPTER["embed_dims"], intermediate_size=1280, num_hidden_layers=1, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=1024,
    ))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, latent_channels=4)
    sd = SimpleNamespace(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER), image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
    )
    pipe = DualIPAdapterPipeline.from_sd_pipeline(sd)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RowCount:
    """Rows through the U-Net: `conv_in` runs in every pass, the mid block only in whole ones."""

    def __init__(self, unet):
        self.total = self.full = 0
        self.handles = [
            unet.conv_in.register_forward_pre_hook(lambda m, a: self.add("total", a[0])),
            unet.mid_block.register_forward_pre_hook(lambda m, a: self.add("full", a[0])),
        ]

    def add(self, name, x):
        setattr(self, name, getattr(self, name) + x.shape[0])

    def remove(self):
        for handle in self.handles:
            handle.remove()


def run_way(pipe, compiled_pipe, way: Way, batch: int, steps: int, latent: int, device) -> tuple[float, torch.Tensor]:
    target = compiled_pipe if way.compiled else pipe
    synchronize(device)
    start = time.perf_counter()
    out = target(
        [f"a photo of a thing {i}" for i in range(batch)],
        [picture(i) for i in range(batch)],
        [picture(100 + i) for i in range(batch)],
        num_inference_steps=steps, height=8 * latent, width=8 * latent, output_type="latent",
        generator=[torch.Generator().manual_seed(i) for i in range(batch)], **GUIDANCE, **way.options,
    ).images
    synchronize(device)
    return (time.perf_counter() - start) / batch, out


def load_line() -> str:
    from machine import load_line as line

    return line()


def evaluations_text(e: dict[str, int]) -> str:
    total = e["full"] + e["shallow"]
    return f"{total} ({e['full']} full)" if not e["shallow"] else f"{total} ({e['full']} full + {e['shallow']} shallow)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16x16 latents, 6 steps, 1 repeat")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default 32 on CPU, 64 on CUDA; 16 --quick)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per image (default 10; 6 --quick)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="images per call, one or more (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per way (default 3; 1 --quick)")
    parser.add_argument("--compile", action="store_true", help="also the default way through torch.compile")
    parser.add_argument("--channels-last", action="store_true", help="run every way in channels-last layout")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("latent", "steps", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.latent is not None and args.latent % 8:
        parser.error(f"--latent {args.latent} must be a multiple of 8")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    from machine import machine_line
    from transformers.utils import logging as transformers_logging

    from synthshot.generation.guidance import evaluations_per_image, step_plan
    from synthshot.generation.pipeline import DualIPAdapterPipeline

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    latent = args.latent or (16 if args.quick else 64 if cuda else 32)
    steps = args.steps or (6 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    print(machine_line(device), flush=True)
    print(f"device {device}, {str(dtype).removeprefix('torch.')}, {latent}x{latent} latents ({8 * latent} px), "
          f"{steps} steps, batches {args.batch}, {repeats} repeat(s); {load_line()}", flush=True)

    wall = time.perf_counter()
    pipe = build_pipeline(device, dtype)
    if args.channels_last:
        pipe.to_channels_last()
    compiled_pipe = None
    ways = [
        Way("default", "default (DIPSY)", {}),
        Way("interval", f"interval [{INTERVAL[0]:g}, {INTERVAL[1]:g}]", {"image_guidance_interval": INTERVAL}),
        Way("cache", f"cache k={CACHE}", {"cache_interval": CACHE}),
        Way("interval+cache", "interval + cache", {"image_guidance_interval": INTERVAL, "cache_interval": CACHE}),
    ]
    if args.compile:
        names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "image_encoder", "feature_extractor",
                 "image_projection")
        compiled_pipe = DualIPAdapterPipeline(**{name: getattr(pipe, name) for name in names})
        compiled_pipe.set_progress_bar_config(disable=True)
        compiled_pipe.compile()
        ways.append(Way("compiled", "default, compiled", {}, compiled=True))
    for way in ways:
        plan = step_plan(steps, "dual", way.options.get("image_guidance_interval", (0.0, 1.0)),
                         way.options.get("cache_interval"))
        way.evaluations = evaluations_per_image(plan, "dual")

    # The warm-up needs 4 steps at most: they hold both branch counts of the interval and both
    # passes of the cache, so every shape the timed calls use is compiled there.
    warm_steps = min(steps, 4)
    with torch.inference_mode():
        for batch in args.batch:
            print(f"\nbatch {batch}: warm-up, {warm_steps} steps per way (compiles the compiled way; checks the "
                  "U-Net rows against the plan)", flush=True)
            for way in ways:
                counter = None if way.compiled else RowCount(pipe.unet)  # hooks would recompile a compiled U-Net
                start = time.perf_counter()
                run_way(pipe, compiled_pipe, way, batch, warm_steps, latent, device)
                print(f"  {way.name}: {time.perf_counter() - start:.1f} s", flush=True)
                if counter is None:
                    continue
                counter.remove()
                seen = {"full": counter.full // batch, "shallow": (counter.total - counter.full) // batch}
                plan = evaluations_per_image(step_plan(warm_steps, "dual", way.options.get(
                    "image_guidance_interval", (0.0, 1.0)), way.options.get("cache_interval")), "dual")
                if seen != plan:
                    print(f"ERROR: {way.name} ran {seen} U-Net rows per image, the plan says {plan}", file=sys.stderr)
                    return 1
            for repeat in range(repeats):
                order = ways if repeat % 2 == 0 else ways[::-1]
                for way in order:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    seconds, latents = run_way(pipe, compiled_pipe, way, batch, steps, latent, device)
                    way.seconds.setdefault(batch, []).append(seconds)
                    way.latents[batch] = latents
                    if cuda:
                        way.peak_gib[batch] = max(way.peak_gib.get(batch, 0.0),
                                                  torch.cuda.max_memory_allocated(device) / 2**30)
                print(f"  repeat {repeat + 1}/{repeats}: "
                      + ", ".join(f"{w.name} {w.seconds[batch][-1]:.3g}" for w in ways) + " s/image", flush=True)

    rows = []
    for batch in args.batch:
        base = ways[0]
        base_fastest, base_median = min(base.seconds[batch]), statistics.median(base.seconds[batch])
        reference = base.latents[batch].float()
        for way in ways:
            fastest, median = min(way.seconds[batch]), statistics.median(way.seconds[batch])
            change = (way.latents[batch].float() - reference).abs().max().item() / reference.abs().max().item()
            rows.append({"key": way.key, "way": way.name, "batch": batch, "steps": steps, "latent": latent,
                         "options": way.options, "evaluations_per_image": way.evaluations,
                         "seconds_per_image": way.seconds[batch], "fastest_seconds_per_image": fastest,
                         "median_seconds_per_image": median, "ratio": base_fastest / fastest,
                         "median_ratio": base_median / median, "latents_vs_default": change,
                         "peak_gib": way.peak_gib.get(batch)})

    width = max(len(r["way"]) for r in rows) + 2
    print("\n" + "=" * (width + 88))
    print(f"{'way':<{width}}{'batch':>6}  {'U-Net evaluations / image':<30}{'s/image':>10}{'vs default':>12}"
          f"{'(medians)':>11}{'latents vs default':>20}" + (f"{'peak GiB':>10}" if cuda else ""))
    for r in rows:
        print(f"{r['way']:<{width}}{r['batch']:>6}  {evaluations_text(r['evaluations_per_image']):<30}"
              f"{r['fastest_seconds_per_image']:>10.4g}{r['ratio']:>11.2f}x{r['median_ratio']:>10.2f}x"
              f"{r['latents_vs_default']:>20.2e}" + (f"{r['peak_gib']:>10.2f}" if cuda else ""))
    print(f"  (SD-1.5 U-Net with random weights, dual guidance, {steps} steps at {latent}x{latent} latents, "
          f"{str(dtype).removeprefix('torch.')}; s/image and 'vs default': the fastest of {repeats} interleaved "
          "calls (the least disturbed by other load), '(medians)': the ratio of the medians; full = whole-U-Net "
          "rows, shallow = DeepCache rows)")
    fast, dipsy = (evaluations_per_image(step_plan(n, "dual"), "dual")["full"] for n in (20, 50))
    print(f"fewer steps (preset dipsy-fast: 20 Align-Your-Steps steps against dipsy's 50): {dipsy / fast:.2f}x fewer "
          f"U-Net evaluations per image ({fast} vs {dipsy}); not timed here, and its accuracy cost is not measured "
          "by the project: measure it with a sweep")
    print(machine_line(device))
    print(load_line())
    if not cuda:
        for r in rows:
            if r["key"] in GOALS:
                goal = GOALS[r["key"]]
                met = "MET" if r["ratio"] >= goal else "NOT MET"
                print(f"goal ({r['way']} >= {goal}x faster per image than default at equal steps, batch "
                      f"{r['batch']}, CPU): {met} ({r['ratio']:.2f}x)")
    print(f"wall time: {time.perf_counter() - wall:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_line(device), "device": str(device), "dtype": str(dtype),
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
