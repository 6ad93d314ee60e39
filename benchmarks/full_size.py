"""The DIPSY and LGCLIP presets end to end at real shapes: every model they use built from its real
configuration with random weights, written in the hub's folder layout, and each preset's stages
run on a few images with 2 denoising steps at the preset's own image size (512x512).

    python benchmarks/full_size.py --bpe /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl
    python benchmarks/full_size.py --bpe ... --presets dipsy          # one family
    python benchmarks/full_size.py --bpe ... --keep /tmp/full-size    # keep the models (13 GB) for another run

Not part of the tests (slow: about 25 min on a 2-core CPU for both families, 13 GB of disk). What it
proves: the presets' model combination loads through synthshot's own loading code at the real
shapes (the U-Net's cross-attention width against the text encoder and the adapters, the
resampler against ViT-H/14's features, 512 px latents, the real 49,408-token tokenizer), and
every stage runs; it prints each stage's time and peak memory. It proves nothing about accuracy
(random weights).

Models, written under a temporary folder, each in the layout of its hub repository:

    stable-diffusion-v1-5/stable-diffusion-v1-5   SD-1.5: U-Net, VAE, CLIP ViT-L/14 text encoder,
                                                  tokenizer, PNDM scheduler config, feature extractor
    h94/IP-Adapter                                models/ip-adapter-plus_sd15.safetensors (resampler
                                                  over ViT-H/14 features, 16 tokens into 16 layers) and
                                                  models/image_encoder (OpenCLIP ViT-H/14 vision tower)
    openai/clip-vit-base-patch16                  CLIP ViT-B/16 with tokenizer and image processor
    stabilityai/stable-diffusion-2-1-base         SD-2.1-base: U-Net (linear projections, cross-attention
                                                  1024), VAE, OpenCLIP ViT-H text encoder (23 layers),
                                                  tokenizer, its PNDM scheduler config

The configurations are the published config.json values, written out below. SD-2.1-base's
published scheduler predicts epsilon (the 768 px stable-diffusion-2-1 is the v-prediction model),
so that is what is written. The tokenizer is the real CLIP BPE: `bpe_simple_vocab_16e6.txt.gz`
ships inside the open-clip-torch wheel (`pip download --no-deps open-clip-torch -d /tmp/oc`);
`--bpe` takes the wheel, the .txt.gz, or a folder holding either, and vocab.json / merges.txt are
derived from it exactly as CLIP's own tokenizer builds its vocabulary.

Runs (output under the same temporary folder): each preset with its models swapped for these
folders, a drawn demo dataset (`data.demo`, 2 classes of 512 px images) instead of its CoOp data,
2 images per class, 2 steps, the smallest fine-tuning and classifier searches; no sweep, no
controls, template prompts for LGCLIP (its LLM is an endpoint, not a model built here). Each
stage runs on its own (`Experiment.run([stage])`) and is timed; peak memory is the process's
resident high-water mark during the stage (reset before it through /proc/self/clear_refs), and on
CUDA torch's peak allocation.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"

# --------------------------------------------------------------------------- published configs
SD_UNET_COMMON = {
    "act_fn": "silu",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json
SD15_UNET = {**SD_UNET_COMMON, "attention_head_dim": 8, "cross_attention_dim": 768}
# stabilityai/stable-diffusion-2-1-base unet/config.json
SD21_UNET = {**SD_UNET_COMMON, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
             "use_linear_projection": True, "dual_cross_attention": False, "only_cross_attention": False}
# vae/config.json of both
SD_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# text_encoder/config.json: SD-1.5's CLIP ViT-L/14 text tower; SD-2.1's OpenCLIP ViT-H/14 text tower
SD15_TEXT = {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
             "num_hidden_layers": 12, "projection_dim": 768, "max_position_embeddings": 77, "vocab_size": 49408,
             "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
SD21_TEXT = {"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
             "num_hidden_layers": 23, "projection_dim": 512, "max_position_embeddings": 77, "vocab_size": 49408,
             "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
# scheduler/scheduler_config.json of both (SD-2.1-base: epsilon prediction, like SD-1.5)
SD_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                "trained_betas": None}
# h94/IP-Adapter models/image_encoder/config.json: OpenCLIP ViT-H/14 vision tower with projection
VIT_H14_VISION = {"hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16,
                  "num_hidden_layers": 32, "image_size": 224, "patch_size": 14, "projection_dim": 1024,
                  "layer_norm_eps": 1e-05}
# ip-adapter-plus_sd15: Resampler(dim=768, depth=4, dim_head=64, heads=12, num_queries=16,
# embedding_dim=1280, output_dim=768, ff_mult=4)
PLUS_RESAMPLER = {"embed_dims": 1280, "output_dims": 768, "hidden_dims": 768, "depth": 4, "dim_head": 64,
                  "heads": 12, "num_queries": 16, "ffn_ratio": 4}
# openai/clip-vit-base-patch16 config.json
VIT_B16 = {
    "text_config": {"hidden_act": "quick_gelu", "hidden_size": 512, "intermediate_size": 2048,
                    "num_attention_heads": 8, "num_hidden_layers": 12, "max_position_embeddings": 77,
                    "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
    "vision_config": {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
                      "num_attention_heads": 12, "num_hidden_layers": 12, "image_size": 224, "patch_size": 16},
    "projection_dim": 512,
    "logit_scale_init_value": 2.6592,
}
CLIP_IMAGE_PROCESSOR = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}

FOLDERS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "ip_adapter": "h94/IP-Adapter",
    "clip": "openai/clip-vit-base-patch16",
    "sd21": "stabilityai/stable-diffusion-2-1-base",
}
PLUS_WEIGHTS = "ip-adapter-plus_sd15.safetensors"


# ------------------------------------------------------------------------------------ tokenizer
def read_bpe(source: Path) -> str:
    """The text of bpe_simple_vocab_16e6.txt from the wheel, the .gz, or a folder with either."""
    source = Path(source)
    if source.is_dir():
        found = sorted(source.rglob(BPE_NAME)) + sorted(source.glob("open_clip_torch-*.whl"))
        if not found:
            raise SystemExit(f"{source} holds neither {BPE_NAME} nor an open_clip_torch wheel")
        source = found[0]
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return gzip.decompress(wheel.read(f"open_clip/{BPE_NAME}")).decode("utf-8")
    return gzip.decompress(source.read_bytes()).decode("utf-8")


def find_bpe(given: str | None) -> Path:
    if given:
        return Path(given)
    import importlib.util

    spec = importlib.util.find_spec("open_clip")  # finds the installed package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / BPE_NAME).is_file():
            return Path(folder) / BPE_NAME
    raise SystemExit(
        f"the real CLIP tokenizer needs {BPE_NAME}: run `pip download --no-deps open-clip-torch -d /tmp/oc` "
        "and pass --bpe /tmp/oc (or install open-clip-torch)"
    )


def write_tokenizer_files(bpe_text: str, folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of CLIP's 49,408-token BPE, as CLIP's SimpleTokenizer builds it:
    the 256 byte symbols, the same with </w>, one token per merge (the first 48,894), then
    <|startoftext|> and <|endoftext|>."""
    from synthshot.models.tiny import _bytes_to_unicode

    merges = bpe_text.split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def make_tokenizer(files: tuple[Path, Path], pad_token: str):
    """transformers' CLIPTokenizer over that vocabulary (SD-1.5 and CLIP pad with <|endoftext|>,
    SD-2.1 with "!")."""
    from transformers import CLIPTokenizer

    vocab = json.loads(files[0].read_text(encoding="utf-8"))
    merges = [tuple(line.split()) for line in files[1].read_text(encoding="utf-8").splitlines()[1:] if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def copy_vocabulary(files: tuple[Path, Path], folder: Path) -> None:
    """vocab.json and merges.txt beside transformers' tokenizer.json, as the hub repositories have them."""
    for path in files:
        shutil.copy(path, folder / path.name)


# ------------------------------------------------------------------------------------- writers
def timed(label: str):
    class Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"  {label} ...", end="", flush=True)

        def __exit__(self, *exc):
            print(f" {time.perf_counter() - self.start:.0f} s", flush=True)

    return Timer()


def write_stable_diffusion(folder: Path, family: str, tokenizer_files, seed: int) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    unet_config, text_config, pad = (SD15_UNET, SD15_TEXT, "<|endoftext|>") if family == "sd15" else \
        (SD21_UNET, SD21_TEXT, "!")
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**unet_config),
        vae=AutoencoderKL(**SD_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        tokenizer=make_tokenizer(tokenizer_files, pad),
        scheduler=PNDMScheduler.from_config({k: v for k, v in SD_SCHEDULER.items() if k != "_class_name"}),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(**CLIP_IMAGE_PROCESSOR),
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    copy_vocabulary(tokenizer_files, folder / "tokenizer")


def write_ip_adapter(folder: Path, seed: int) -> None:
    """h94/IP-Adapter's layout: the plus adapter in the original key format, the ViT-H/14 encoder."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from synthshot.models.tiny import _cross_attention_layers, plus_to_original

    models = folder / "models"
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H14_VISION)).save_pretrained(
        models / "image_encoder", safe_serialization=True)
    torch.manual_seed(seed + 1)
    resampler = IPAdapterPlusImageProjection(**PLUS_RESAMPLER)
    tensors = {f"image_proj.{k}": v for k, v in plus_to_original(resampler.state_dict()).items()}
    for position, hidden in enumerate(_cross_attention_layers(SD15_UNET)):
        for name in ("to_k_ip", "to_v_ip"):
            layer = torch.nn.Linear(SD15_UNET["cross_attention_dim"], hidden, bias=False)
            tensors[f"ip_adapter.{2 * position + 1}.{name}.weight"] = layer.weight.detach()
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, models / PLUS_WEIGHTS)


def write_clip(folder: Path, tokenizer_files, seed: int) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**VIT_B16)).save_pretrained(folder, safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(**CLIP_IMAGE_PROCESSOR),
                  tokenizer=make_tokenizer(tokenizer_files, "<|endoftext|>")).save_pretrained(folder)
    copy_vocabulary(tokenizer_files, folder)


def write_models(hub: Path, bpe: Path, families: list[str]) -> None:
    tokenizer_files = write_tokenizer_files(read_bpe(bpe), hub / "_bpe")
    from transformers import CLIPTokenizer

    check = make_tokenizer(tokenizer_files, "<|endoftext|>")
    ids = check("a photo of a cat.").input_ids
    print(f"  real CLIP tokenizer: {len(check)} tokens; 'a photo of a cat.' -> {ids}", flush=True)
    assert isinstance(check, CLIPTokenizer) and len(check) == 49408
    needed = {"dipsy": ["sd15", "ip_adapter", "clip"], "lgclip": ["sd21", "clip"]}
    parts = [p for p in FOLDERS if any(p in needed[f] for f in families)]
    for seed, part in enumerate(parts):
        folder = hub / FOLDERS[part]
        if (folder / ".complete").is_file():
            print(f"  {FOLDERS[part]}: kept from an earlier run", flush=True)
            continue
        with timed(f"writing {FOLDERS[part]}"):
            if part in ("sd15", "sd21"):
                write_stable_diffusion(folder, part, tokenizer_files, seed=10 * seed)
            elif part == "ip_adapter":
                write_ip_adapter(folder, seed=10 * seed)
            else:
                write_clip(folder, tokenizer_files, seed=10 * seed)
        (folder / ".complete").write_text("")


# ------------------------------------------------------------------------------------- presets
def preset_overrides(family: str, hub: Path, out: Path, images: int, classes: int) -> dict:
    common = {
        "output_dir": str(out / family),
        "offline": True,
        "controls": [],
        "sweep": None,
        "data.layout": "imagefolder",
        "data.root": None,
        "data.demo": {"classes": classes, "images_per_class": 4, "size": 512},
        "generation.images_per_class": images,
        "generation.steps": 2,
        "generation.batch_size": 2,
        "models.clip": str(hub / FOLDERS["clip"]),
    }
    if family == "dipsy":
        return {**common,
                "models.diffusion": str(hub / FOLDERS["sd15"]),
                "models.ip_adapter": str(hub / FOLDERS["ip_adapter"]),
                "data.shots": 2,
                "similarity.batch_size": 8,
                "finetune.epochs": 1, "finetune.batch_size": 4, "finetune.steps_per_epoch": 1,
                "finetune.warmup_steps": 0, "finetune.num_workers": 0, "finetune.eval_batch_size": 8,
                "finetune.val": None, "finetune.test": {"source": "heldout"}}
    return {**common,
            "models.diffusion": str(hub / FOLDERS["sd21"]),
            "data.shots": 0,
            "prompts.backend": "template", "prompts.per_class": 2,
            "features.batch_size": 8,
            "classifier.val": None, "classifier.test": {"source": "heldout"},
            "classifier.tip_alpha": [1.0], "classifier.tip_beta": [1.0]}


class PeakMemory:
    """The resident high-water mark of this process during a block: reset through
    /proc/self/clear_refs where the kernel allows it, else sampled every 20 ms."""

    def __init__(self):
        self.peak_gib = float("nan")
        self.cuda_gib = None

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(field)

    def __enter__(self):
        self._sampled, self._stop = 0, threading.Event()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self._sampled = max(self._sampled, self._status("VmRSS"))

    def __exit__(self, *exc):
        if self._reset:
            self.peak_gib = self._status("VmHWM") / 2**30
        else:
            self._stop.set()
            self._thread.join()
            self.peak_gib = self._sampled / 2**30
        if torch.cuda.is_available():
            self.cuda_gib = torch.cuda.max_memory_allocated() / 2**30


def run_preset(family: str, overrides: dict) -> list[dict]:
    from synthshot.experiment import Experiment

    exp = Experiment.from_config(family, **overrides)
    config = exp.config
    print(f"\n{family}: stages {config.stages}; {config.generation.mode} mode, {config.generation.width}x"
          f"{config.generation.height}, {config.generation.steps} steps, {config.generation.images_per_class} "
          f"images x {config.data.demo.classes} classes; diffusion {Path(config.models.diffusion).name}", flush=True)
    rows = []
    for stage in config.stages:
        start = time.perf_counter()
        with PeakMemory() as memory:
            exp.run([stage], echo=lambda line: print(f"    {line}", flush=True))
        seconds = time.perf_counter() - start
        rows.append({"preset": family, "stage": stage, "seconds": seconds, "peak_rss_gib": memory.peak_gib,
                     "peak_cuda_gib": memory.cuda_gib})
        print(f"  {family} {stage}: {seconds:.1f} s, peak RSS {memory.peak_gib:.2f} GiB", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", default=None, help=f"the open-clip-torch wheel, {BPE_NAME}, or a folder with either")
    parser.add_argument("--presets", nargs="+", choices=["dipsy", "lgclip"], default=["dipsy", "lgclip"])
    parser.add_argument("--images", type=int, default=2, help="synthetic images per class (default 2)")
    parser.add_argument("--classes", type=int, default=2, help="demo classes (default 2)")
    parser.add_argument("--keep", type=Path, default=None, help="write (and reuse) the models here, not in a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the timings to this JSON file")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging
    from machine import machine_line
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(machine_line(device), flush=True)
    bpe = find_bpe(args.bpe)
    wall = time.perf_counter()
    temporary = None
    if args.keep is None:
        temporary = tempfile.mkdtemp(prefix="synthshot-full-size-")
    root = Path(args.keep or temporary)
    rows = []
    try:
        print(f"models -> {root / 'hub'}", flush=True)
        write_models(root / "hub", bpe, args.presets)
        runs = Path(tempfile.mkdtemp(prefix="runs-", dir=root))
        for family in args.presets:
            rows += run_preset(family, preset_overrides(family, root / "hub", runs, args.images, args.classes))
        shutil.rmtree(runs, ignore_errors=True)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)

    cuda = device == "cuda"
    print("\n" + "=" * 64)
    print(f"{'preset':<8}{'stage':<12}{'seconds':>10}{'peak RSS GiB':>15}" + (f"{'peak CUDA GiB':>15}" if cuda else ""))
    for r in rows:
        print(f"{r['preset']:<8}{r['stage']:<12}{r['seconds']:>10.1f}{r['peak_rss_gib']:>15.2f}"
              + (f"{r['peak_cuda_gib']:>15.2f}" if cuda else ""))
    print(f"wall time (models written and runs): {time.perf_counter() - wall:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_line(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
