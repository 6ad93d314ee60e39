"""From config to images: build the DIPSY pipeline from the configured models, and render work
items (positive/negative files, seeds) into images for the runner."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthshot.config import GenerationConfig, ModelsConfig
from synthshot.errors import ConfigError
from synthshot.generation.augment import augment_ip_image
from synthshot.generation.items import WorkItem, item_augment_seed, item_noise_seed
from synthshot.generation.pipeline import DualIPAdapterPipeline
from synthshot.models.hub import HubOptions, resolve_dtype

logger = logging.getLogger("synthshot.generation")

SCHEDULERS = {
    "dpm": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
}


def make_scheduler(name: str, config):
    """A scheduler of the named family, with the pipeline's own noise schedule (`config`)."""
    import diffusers

    if name == "default":  # the scheduler the pipeline folder ships (LGCLIP keeps SD 2.1-base's)
        return getattr(diffusers, config["_class_name"]).from_config(config)
    if name not in SCHEDULERS:
        raise ConfigError(f"generation.scheduler {name!r} is not one of default, {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile (its default inductor backend) cannot run on `device`, or None."""
    import shutil

    try:
        from torch import _dynamo

        if not _dynamo.is_dynamo_supported():
            return f"torch.compile is not supported by this Python/PyTorch ({torch.__version__})"
    except Exception as exc:  # an unsupported Python raises here
        return f"torch.compile is not available: {exc}"
    kind = torch.device(device).type
    if kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton for CUDA, and Triton is not installed"
    elif kind == "cpu":
        if not any(shutil.which(name) for name in (os.environ.get("CXX") or "g++", "g++", "clang++", "c++")):
            return "inductor needs a C++ compiler (g++ or clang++) on the CPU, and none is on PATH"
    elif kind != "mps":
        return f"no torch.compile backend is known to work on {kind!r} devices"
    return None


def load_pipeline(
    models: ModelsConfig, generation: GenerationConfig, options: HubOptions, device: str
) -> DualIPAdapterPipeline:
    """Stable Diffusion + the IP-Adapters the mode needs (none for text), on `device`."""
    from synthshot.models.diffusion import load_ip_adapters, load_sd_pipeline

    if generation.compile and (why := compile_unavailable(device)):  # before any weight loads
        raise ConfigError(f"generation.compile is true but {why}: set generation.compile: false")
    dtype = resolve_dtype(generation.precision, device)
    sd = load_sd_pipeline(models.diffusion, options, dtype=dtype)
    if generation.mode != "text":
        load_ip_adapters(
            sd,
            models.ip_adapter,
            models.ip_adapter_subfolder,
            models.ip_adapter_weights,
            options,
            image_encoder=models.image_encoder,
            image_encoder_subfolder=models.image_encoder_subfolder,
        )
    pipe = DualIPAdapterPipeline.from_sd_pipeline(sd)
    pipe.scheduler = make_scheduler(generation.scheduler, sd.scheduler.config)
    pipe.to(device)
    pipe.set_attention(generation.attention)
    pipe.set_progress_bar_config(disable=True)
    if generation.channels_last:
        pipe.to_channels_last()
    if generation.compile:
        pipe.compile()
    return pipe


class PipelineRenderer:
    """Renders a batch of work items with one pipeline call.

    Each item's seed alone decides its augmentation and initial noise, so an image does not depend
    on the batch it was rendered in. An item whose positive or negative image cannot be read comes
    back as that error, and the rest of the batch is rendered.
    """

    def __init__(
        self,
        pipe: DualIPAdapterPipeline,
        generation: GenerationConfig,
        load_image: Callable[[Path], Image.Image] | None = None,
    ):
        if load_image is None:
            from synthshot.data.folders import load_rgb as load_image
        self.pipe = pipe
        self.config = generation
        self.load_image = load_image

    def conditioning(self, item: WorkItem) -> tuple[Image.Image | None, Image.Image | None]:
        """The (augmented) positive and negative images of an item; augmentation draws come from
        the item's own augmentation seed, positive first."""
        rng = np.random.default_rng(item_augment_seed(item))
        images = []
        for path in (item.positive_file, item.negative_file):
            if path is None:
                images.append(None)
                continue
            image = self.load_image(Path(path))
            images.append(augment_ip_image(image, rng, enabled=self.config.augment))
        return images[0], images[1]

    def __call__(self, items: list[WorkItem]) -> list[Image.Image | Exception]:
        results: list[Image.Image | Exception | None] = [None] * len(items)
        ready: list[tuple[int, WorkItem, Image.Image | None, Image.Image | None]] = []
        for position, item in enumerate(items):
            try:
                ready.append((position, item, *self.conditioning(item)))
            except Exception as exc:  # reported per item by the runner; the batch goes on
                results[position] = exc
        if ready:
            mode = self.config.mode
            images = self.pipe(
                ["" if self.config.empty_text else item.prompt for _, item, _, _ in ready],
                positive_image=[p for _, _, p, _ in ready] if mode != "text" else None,
                negative_image=[n for _, _, _, n in ready] if mode == "dual" else None,
                w_text=self.config.w_text,
                w_pos=self.config.w_pos,
                w_neg=self.config.w_neg,
                ip_adapter_scale=self.config.ip_adapter_scale,
                num_inference_steps=self.config.steps,
                height=self.config.height,
                width=self.config.width,
                generator=[torch.Generator().manual_seed(item_noise_seed(item)) for _, item, _, _ in ready],
                mode=mode,
                image_guidance_interval=self.config.image_guidance_interval,
                cache_interval=self.config.cache_interval,
                timestep_schedule=self.config.timestep_schedule,
                vae_batch_size=self.config.vae_batch_size,
            ).images
            for (position, *_), image in zip(ready, images):
                results[position] = image
        return results
