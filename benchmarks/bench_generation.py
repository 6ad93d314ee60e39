"""Speed of DIPSY's dual guidance: the official 3-call step against synthshot's gated single call,
plus end-to-end generation throughput on the tiny model kit.

    python benchmarks/bench_generation.py                 # defaults: ~5-8 minutes on a 2-core CPU
    python benchmarks/bench_generation.py --quick         # ~1 minute
    python benchmarks/bench_generation.py --no-full-size  # tiny kit only (seconds)

What is measured (all in one process, side by side):

1. One denoising step of dual guidance for B images (DIPSY Eq. 9 needs four predictions per image:
   uncond, text, text + positive adapter, text + positive + negative adapter).

   official  what DIPSY's official code does: 3 U-Net calls of batch 2B per step, diffusers' global
             IP-Adapter scales set before each call ([0, 0], [s, 0], [s, s]); the U-Net keeps its own
             image projection and gets the raw image-encoder features every call. 6B U-Net
             evaluations, of which 4B are used.
   gated     synthshot's `DualIPAdapterPipeline`: 1 U-Net call of batch 4B with the image tokens
             projected once and gated per sample. 4B evaluations.

   Both steps include the latent batching and the guidance combination. Before timing, each way
   runs once (also the warm-up) and the four predictions are compared, so the benchmark proves
   that both compute the same thing. Timed repeats are interleaved (official, gated, gated,
   official, ...) so that drift from other load on the machine hits both alike; the medians and
   their ratio are reported.

   Models: (a) the tiny model kit (`synthshot.models.tiny`, written to a temporary folder and
   loaded through the same code as real weights); (b) a full-size Stable Diffusion 1.5 U-Net
   (860M parameters, SD-1.5's real configuration) with random weights and two IP-Adapter-plus
   adapters of the real shape (16 tokens of width 768 on all 16 cross-attention layers, a
   4-layer resampler over ViT-H/14 features of shape [257, 1280]), loaded through diffusers' own
   `_load_ip_adapter_weights` from state dicts in the original h94 key format. No image encoder is
   run: random features of the right shape stand in for it (it is outside the step anyway).

2. Generation throughput (images/s) of the full synthshot path on the tiny kit: `plan_items` on a
   drawn demo dataset, `PipelineRenderer` over `load_pipeline`, `run_generation` writing PNGs and
   the manifest. This includes prompt and image encoding, the VAE decode and file writing.

On a CPU everything runs in fp32; with CUDA, fp16 and the full-size figure at 512x512 images (64x64
latents) unless --latent/--size says otherwise. Nothing is hard-coded: every figure is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

# The project's goal on CPU: the gated step at least this much faster on the full-size U-Net.
CPU_GOAL_RATIO = 1.35
IP_SCALE = 0.6  # DIPSY's IP-Adapter scale
GUIDANCE = {"w_text": 7.5, "w_pos": 6.0, "w_neg": 6.0}  # DIPSY's official guidance weights
TIMESTEP = 500
# Largest allowed |official - gated| / max|official| over the four predictions.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# Stable Diffusion 1.5's U-Net (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json).
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "use_linear_projection": False,
}
# ip-adapter-plus_sd15 (h94/IP-Adapter): resampler over OpenCLIP ViT-H/14 penultimate hidden states.
PLUS_ADAPTER = {
    "embed_dims": 1280,  # ViT-H/14 hidden size
    "image_tokens": 257,  # 16x16 patches + class token at 224 px
    "output_dims": 768,
    "hidden_dims": 768,
    "heads": 12,
    "depth": 4,
    "num_queries": 16,
}


# ------------------------------------------------------------------------------------- timing
@dataclass
class StepResult:
    name: str
    batch: int
    official: list[float] = field(default_factory=list)  # seconds per step, each repeat
    gated: list[float] = field(default_factory=list)
    max_abs_diff: float = float("nan")
    max_rel_diff: float = float("nan")
    tolerance: float = float("nan")
    branch_effect: float = float("nan")  # how much the adapters change the prediction (non-vacuous)

    @property
    def official_median(self) -> float:
        return statistics.median(self.official)

    @property
    def gated_median(self) -> float:
        return statistics.median(self.gated)

    @property
    def ratio(self) -> float:
        return self.official_median / self.gated_median

    @property
    def equal(self) -> bool:
        return self.max_rel_diff <= self.tolerance and self.branch_effect > 10 * self.max_abs_diff


@dataclass
class Way:
    """One way of computing a dual-guidance step. `prepare` puts the shared U-Net into this way's
    state (untimed); `step` computes the four predictions and the guided noise (timed)."""

    prepare: callable
    step: callable


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(way: Way, device: torch.device) -> tuple[float, tuple]:
    way.prepare()
    synchronize(device)
    start = time.perf_counter()
    out = way.step()
    synchronize(device)
    return time.perf_counter() - start, out


def compare_and_time(
    name: str, official: Way, gated: Way, batch: int, repeats: int, device: torch.device, dtype
) -> StepResult:
    result = StepResult(name, batch, tolerance=TOLERANCE[dtype])
    # First run of each way: the warm-up, and the check that both compute the same predictions.
    _, (want, _) = timed(official, device)
    _, (got, _) = timed(gated, device)
    scale = max(w.abs().max().item() for w in want)
    result.max_abs_diff = max((g.float() - w.float()).abs().max().item() for g, w in zip(got, want))
    result.max_rel_diff = result.max_abs_diff / scale
    # eP - eT and eN - eP: the adapters really act, so equal predictions are not trivially equal.
    result.branch_effect = min((want[2] - want[1]).abs().max().item(), (want[3] - want[2]).abs().max().item())
    print(
        f"  check: max |official - gated| = {result.max_abs_diff:.3g} "
        f"({result.max_rel_diff:.3g} of max |eps| {scale:.3g}; tolerance {result.tolerance:g}); "
        f"adapter effect on eps {result.branch_effect:.3g}",
        flush=True,
    )
    for repeat in range(repeats):
        order = [("official", official), ("gated", gated)]
        if repeat % 2:
            order.reverse()  # A B B A A B ...: linear drift hits both ways alike
        for label, way in order:
            seconds, _ = timed(way, device)
            getattr(result, label).append(seconds)
        if repeats <= 10:
            print(
                f"  repeat {repeat + 1}/{repeats}: official {result.official[-1]:.4g} s, gated {result.gated[-1]:.4g} s",
                flush=True,
            )
    if repeats > 10:
        for label in ("official", "gated"):
            values = getattr(result, label)
            print(
                f"  {label}: {repeats} repeats, min {min(values):.4g} s, median {statistics.median(values):.4g} s, "
                f"max {max(values):.4g} s",
                flush=True,
            )
    return result


# ------------------------------------------------------------------------------- step builders
def make_ways(
    unet,
    projection,
    set_official_scales,
    set_gated_scale,
    gated_unet,
    raw_features: list[torch.Tensor],
    latents: torch.Tensor,
    uncond: torch.Tensor,
    text: torch.Tensor,
    shared: bool,
) -> tuple[Way, Way]:
    """The two ways for B = len(latents) images.

    `unet` has the IP-Adapter attention processors; `projection` is its MultiIPAdapterImageProjection.
    `raw_features[a]` are adapter a's image-encoder features for [unconditional image x B, image x B]
    (what diffusers' pipeline hands the U-Net under classifier-free guidance). `gated_unet` is the
    U-Net whose projection is a `ProjectedImageTokens`; with `shared`, it is `unet` itself and the
    projection module is swapped in `prepare`.
    """
    from synthshot.generation.guidance import dual_ip_guidance
    from synthshot.generation.pipeline import DualIPAdapterPipeline, ProjectedImageTokens

    batch = latents.shape[0]
    device, dtype = latents.device, latents.dtype
    t = torch.tensor(TIMESTEP, device=device)
    pass_through = ProjectedImageTokens()

    # official: [uncond, text] in every call, the image features raw, global scales per call.
    pair_states = torch.cat([uncond, text])
    official_embeds = {"image_embeds": list(raw_features)}

    def official_prepare():
        if shared:
            unet.encoder_hid_proj = projection

    def official_step():
        model_input = torch.cat([latents] * 2)
        outputs = []
        for scales in ([0.0, 0.0], [IP_SCALE, 0.0], [IP_SCALE, IP_SCALE]):
            set_official_scales(scales)
            outputs.append(
                unet(model_input, t, encoder_hidden_states=pair_states, added_cond_kwargs=official_embeds).sample
            )
        e0, eT = outputs[0].chunk(2)
        eP, eN = outputs[1].chunk(2)[1], outputs[2].chunk(2)[1]
        return (e0, eT, eP, eN), dual_ip_guidance(e0, eT, eP, eN, **GUIDANCE)

    # gated: each image projected once (outside the step, as the pipeline does before its loop).
    gates = DualIPAdapterPipeline.branch_gates("dual", batch, device, dtype)
    tokens = []
    for adapter, features in enumerate(raw_features):
        layer = projection.image_projection_layers[adapter]
        projected = layer(features[batch:].squeeze(1)).unsqueeze(1)  # the image rows only
        tokens.append(projected.repeat(4, 1, 1, 1) * gates[adapter])
    gated_embeds = {"image_embeds": tokens}
    quad_states = torch.cat([uncond, text, text, text])

    def gated_prepare():
        if shared:
            gated_unet.encoder_hid_proj = pass_through
            set_gated_scale(IP_SCALE)  # the official step left other scales behind

    def gated_step():
        model_input = torch.cat([latents] * 4)
        noise = gated_unet(model_input, t, encoder_hidden_states=quad_states, added_cond_kwargs=gated_embeds).sample
        branches = noise.chunk(4)
        return branches, dual_ip_guidance(*branches, **GUIDANCE)

    return Way(official_prepare, official_step), Way(gated_prepare, gated_step)


def bench_tiny_step(kit: Path, batch: int, repeats: int, device: torch.device, dtype) -> StepResult:
    """Two copies of the tiny kit, loaded like real models: diffusers' StableDiffusionPipeline with
    both adapters (official) and synthshot's DualIPAdapterPipeline built from the second copy."""
    from synthshot.config import ModelsConfig
    from synthshot.generation.pipeline import DualIPAdapterPipeline
    from synthshot.models.diffusion import load_ip_adapters, load_sd_pipeline
    from synthshot.models.hub import HubOptions
    from synthshot.models.tiny import kit_model_settings

    models = ModelsConfig(**kit_model_settings(kit))
    options = HubOptions(offline=True)

    def load():
        sd = load_sd_pipeline(models.diffusion, options, dtype=dtype)
        load_ip_adapters(sd, models.ip_adapter, models.ip_adapter_subfolder, models.ip_adapter_weights, options)
        return sd.to(device)

    sd = load()
    dipsy = DualIPAdapterPipeline.from_sd_pipeline(load())
    dipsy.set_progress_bar_config(disable=True)
    dipsy.set_ip_adapter_scale(IP_SCALE)

    generator = torch.Generator().manual_seed(0)
    size = sd.unet.config.sample_size
    latents = torch.randn(batch, 4, size, size, generator=generator).to(device, dtype)
    text = dipsy.encode_prompt(["A photo of a circle"] * batch)
    uncond = dipsy.encode_prompt([""] * batch)
    encoder = sd.image_encoder.config
    tokens = (encoder.image_size // encoder.patch_size) ** 2 + 1
    raw = [
        torch.randn(2 * batch, 1, tokens, encoder.hidden_size, generator=generator).to(device, dtype)
        for _ in range(dipsy.num_adapters)
    ]
    official, gated = make_ways(
        sd.unet,
        sd.unet.encoder_hid_proj,
        sd.set_ip_adapter_scale,  # diffusers' global scale, as DIPSY's official code
        dipsy.set_ip_adapter_scale,
        dipsy.unet,
        raw,
        latents,
        uncond,
        text,
        shared=False,
    )
    name = f"dual step, tiny kit, {size}x{size} latents, batch {batch}"
    print(f"\n{name}", flush=True)
    return compare_and_time(name, official, gated, batch, repeats, device, dtype)


def build_full_size_unet(device: torch.device, dtype, seed: int = 0):
    """SD-1.5's U-Net with random weights and two random ip-adapter-plus adapters loaded through
    diffusers (state dicts in the original h94 format, as `load_ip_adapter` reads them)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    from synthshot.models.tiny import plus_to_original

    start = time.perf_counter()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    cross = [
        unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
        for name in unet.attn_processors
        if name.endswith("attn2.processor")
    ]
    state_dicts = []
    for adapter in range(2):  # positive and negative adapter, different random weights
        torch.manual_seed(seed + 1 + adapter)
        resampler = IPAdapterPlusImageProjection(
            embed_dims=PLUS_ADAPTER["embed_dims"],
            output_dims=PLUS_ADAPTER["output_dims"],
            hidden_dims=PLUS_ADAPTER["hidden_dims"],
            depth=PLUS_ADAPTER["depth"],
            heads=PLUS_ADAPTER["heads"],
            num_queries=PLUS_ADAPTER["num_queries"],
        )
        attention = {}
        for position, hidden in enumerate(cross):
            for name in ("to_k_ip", "to_v_ip"):
                layer = torch.nn.Linear(SD15_UNET_CONFIG["cross_attention_dim"], hidden, bias=False)
                attention[f"{2 * position + 1}.{name}.weight"] = layer.weight.detach().clone()
        state_dicts.append({"image_proj": plus_to_original(resampler.state_dict()), "ip_adapter": attention})
    unet._load_ip_adapter_weights(state_dicts)
    unet = unet.to(device=device, dtype=dtype)
    parameters = sum(p.numel() for p in unet.parameters()) / 1e6
    print(
        f"  built SD-1.5 U-Net + 2 ip-adapter-plus ({parameters:.0f}M parameters, "
        f"{len(cross)} cross-attention layers) in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    return unet


def bench_full_size_step(latent: int, batch: int, repeats: int, device: torch.device, dtype) -> StepResult:
    """One U-Net in memory for both ways (identical weights, no second 3.4 GB copy): `prepare`
    swaps its projection module between diffusers' MultiIPAdapterImageProjection (official) and
    synthshot's ProjectedImageTokens (gated)."""
    from diffusers.loaders import IPAdapterMixin

    from synthshot.generation.pipeline import DualIPAdapterPipeline

    name = f"dual step, SD-1.5 U-Net (random), {latent}x{latent} latents ({latent * 8}px), batch {batch}"
    print(f"\n{name}", flush=True)
    unet = build_full_size_unet(device, dtype)
    holder = SimpleNamespace(unet=unet)  # what diffusers' and synthshot's scale setters read

    generator = torch.Generator().manual_seed(1)
    cross = SD15_UNET_CONFIG["cross_attention_dim"]
    latents = torch.randn(batch, 4, latent, latent, generator=generator).to(device, dtype)
    # CLIP text-encoder states are O(1); 77 tokens of width 768.
    text = torch.randn(batch, 77, cross, generator=generator).to(device, dtype)
    uncond = torch.randn(batch, 77, cross, generator=generator).to(device, dtype)
    raw = [
        torch.randn(2 * batch, 1, PLUS_ADAPTER["image_tokens"], PLUS_ADAPTER["embed_dims"], generator=generator).to(
            device, dtype
        )
        for _ in range(2)
    ]
    official, gated = make_ways(
        unet,
        unet.encoder_hid_proj,
        lambda scales: IPAdapterMixin.set_ip_adapter_scale(holder, scales),  # diffusers' own setter
        lambda scale: DualIPAdapterPipeline.set_ip_adapter_scale(holder, scale),  # synthshot's
        unet,
        raw,
        latents,
        uncond,
        text,
        shared=True,
    )
    return compare_and_time(name, official, gated, batch, repeats, device, dtype)


# ------------------------------------------------------------------------------- generation
def bench_generate(
    kit: Path, work: Path, batch_sizes: list[int], rounds: int, steps: int, per_class: int, device: torch.device
) -> dict[int, float]:
    """images/s of the whole synthshot generation path on the tiny kit (dual mode)."""
    from synthshot.config import GenerationConfig, ModelsConfig
    from synthshot.data.demo import make_demo_dataset
    from synthshot.generation.engine import PipelineRenderer, load_pipeline
    from synthshot.generation.items import plan_items
    from synthshot.generation.runner import run_generation
    from synthshot.models.hub import HubOptions
    from synthshot.models.tiny import IMAGE_SIZE, kit_model_settings

    layout = make_demo_dataset(work / "demo", classes=2, images_per_class=4, size=64, seed=0)
    split = {name: [str(path) for path in files] for name, files in layout.items()}
    prompts = {name: f"A photo of a {name}" for name in split}
    items = plan_items(split, images_per_class=per_class, base_seed=0, prompts=prompts, mode="dual", negative_probs=None)
    models = ModelsConfig(**kit_model_settings(kit))
    config = GenerationConfig(
        mode="dual", steps=steps, height=IMAGE_SIZE, width=IMAGE_SIZE, precision="fp16" if device.type == "cuda" else "fp32"
    )
    pipe = load_pipeline(models, config, HubOptions(offline=True), str(device))
    renderer = PipelineRenderer(pipe, config)

    def run(out: Path, batch: int, subset) -> tuple[int, float]:
        start = time.perf_counter()
        report = run_generation(subset, renderer, out, batch_size=batch, progress=False)
        elapsed = time.perf_counter() - start
        report.raise_for_failures()
        return len(report.done), elapsed

    run(work / "warmup", max(batch_sizes), items[: max(batch_sizes)])  # warm-up
    rates: dict[int, list[float]] = {batch: [] for batch in batch_sizes}
    for round_ in range(rounds):
        for batch in batch_sizes if round_ % 2 == 0 else list(reversed(batch_sizes)):
            done, elapsed = run(work / f"gen-b{batch}-r{round_}", batch, items)
            rates[batch].append(done / elapsed)
            print(
                f"  round {round_ + 1}/{rounds}, batch {batch}: {done} images in {elapsed:.2f} s "
                f"({rates[batch][-1]:.2f} images/s)",
                flush=True,
            )
    # The median round: one round slowed down by other load on the machine does not decide it.
    return {batch: statistics.median(values) for batch, values in rates.items()}


# ------------------------------------------------------------------------------------ report
def machine_line(device: torch.device) -> str:
    import diffusers
    from machine import machine_line as describe

    return describe(device, f"diffusers {diffusers.__version__}")


def load_line(own_threads: int = 0) -> str:
    from machine import load_line as line

    return line(own_threads)


def print_table(steps: list[StepResult], generate: dict[int, float] | None, generate_desc: str, device) -> None:
    width = max([len(r.name) for r in steps] + [40])
    print("\n" + "=" * (width + 70))
    print(f"{'benchmark':<{width}}  {'official s/step':>15}  {'gated s/step':>12}  {'official/gated':>14}  {'equal':>9}")
    for r in steps:
        verdict = f"{r.max_rel_diff:.1e}" if r.equal else "MISMATCH"
        print(
            f"{r.name:<{width}}  {r.official_median:>15.4g}  {r.gated_median:>12.4g}  {r.ratio:>13.2f}x  {verdict:>9}"
        )
    print(
        "  (medians over the timed repeats; official = 3 U-Net calls of batch 2B with global IP scales, "
        "gated = 1 call of batch 4B; 'equal' = max relative difference of the four predictions)"
    )
    if generate:
        figures = ", ".join(f"batch {batch} {rate:.2f}" for batch, rate in generate.items())
        print(f"generate ({generate_desc}) images/s (median round): {figures}")
    print(machine_line(device))
    print(load_line(torch.get_num_threads() if device.type == "cpu" else 1))
    full = [r for r in steps if "SD-1.5" in r.name]
    if device.type == "cpu":
        for r in full:
            met = "MET" if r.ratio >= CPU_GOAL_RATIO else "NOT MET"
            print(f"goal (gated >= {CPU_GOAL_RATIO}x faster than official on the full-size U-Net, CPU): {met} ({r.ratio:.2f}x)")
        if not full:
            print("goal (full-size U-Net, CPU): not measured (--no-full-size)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="full-size at 16x16 latents, 1 repeat, 1 generate round (~1 min)")
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True, help="benchmark the full-size SD-1.5 U-Net (default: yes)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--latent", type=int, default=None, help="full-size latent side (default 32 on CPU, 64 on CUDA; 16 with --quick)")
    size.add_argument("--size", type=int, default=None, help="full-size image side in pixels (latent = size / 8), e.g. 512")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of the full-size step per way (default 3; 1 with --quick)")
    parser.add_argument("--tiny-repeats", type=int, default=None, help="timed repeats of the tiny-kit step per way (default 30; 10 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="generate rounds per batch size, median reported (default 3; 1 with --quick)")
    parser.add_argument("--batch", type=int, default=1, help="images per step, B (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True, help="run the generate throughput benchmark (default: yes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.size is not None:
        if args.size % 8:
            parser.error(f"--size {args.size} is not a multiple of 8")
        args.latent = args.size // 8
    for name in ("latent", "repeats", "tiny_repeats", "rounds", "batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latent is not None and args.latent % 8:
        parser.error(f"--latent {args.latent} must be a multiple of 8 (the U-Net downsamples 3 times)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    latent = args.latent or (16 if args.quick else 64 if device.type == "cuda" else 32)
    repeats = args.repeats or (1 if args.quick else 3)
    tiny_repeats = args.tiny_repeats or (10 if args.quick else 30)
    rounds = args.rounds or (1 if args.quick else 3)
    print(machine_line(device), flush=True)
    print(f"device {device}, {str(dtype).removeprefix('torch.')}, batch B={args.batch}; {load_line()}", flush=True)

    wall = time.perf_counter()
    steps: list[StepResult] = []
    generate = None
    steps_per_image, per_class = 10, 8
    generate_desc = f"tiny kit, dual, 2 classes x {per_class} images, {steps_per_image} steps, 32x32"
    from synthshot.models.tiny import make_tiny_kit

    with tempfile.TemporaryDirectory(prefix="synthshot-bench-") as tmp, torch.inference_mode():
        work = Path(tmp)
        start = time.perf_counter()
        kit = make_tiny_kit(work / "tiny-kit", seed=0)
        print(f"tiny kit written in {time.perf_counter() - start:.1f} s", flush=True)
        steps.append(bench_tiny_step(kit, args.batch, tiny_repeats, device, dtype))
        if args.generate:
            print(f"\ngenerate ({generate_desc})", flush=True)
            generate = bench_generate(kit, work, [1, 4], rounds, steps_per_image, per_class, device)
        if args.full_size:
            steps.append(bench_full_size_step(latent, args.batch, repeats, device, dtype))

    print_table(steps, generate, generate_desc, device)
    print(f"wall time: {time.perf_counter() - wall:.0f} s")
    if args.json:
        payload = {
            "machine": machine_line(device),
            "load_after": load_line(torch.get_num_threads() if device.type == "cpu" else 1),
            "device": str(device),
            "dtype": str(dtype),
            "steps": [
                {
                    "name": r.name,
                    "batch": r.batch,
                    "official_s": r.official,
                    "gated_s": r.gated,
                    "official_median_s": r.official_median,
                    "gated_median_s": r.gated_median,
                    "ratio": r.ratio,
                    "max_abs_diff": r.max_abs_diff,
                    "max_rel_diff": r.max_rel_diff,
                    "equal": r.equal,
                }
                for r in steps
            ],
            "generate_images_per_s": generate,
            "generate": generate_desc,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    if not all(r.equal for r in steps):
        print("ERROR: the official and gated predictions differ: the comparison is not of equal work", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
