"""What a synthetic image depends on, as data: recorded with every image and compared on reuse.

* `image_settings(config)`: every setting an image depends on (models, mode, scales, steps,
  scheduler, size, precision, attention, seed, augmentation, negative sampling, format), and
  the speed options that change images (a timestep schedule, a guidance interval, DeepCache's
  interval), each only when it is not the default, so that sets made before these options existed
  keep their fingerprints. Batch size, compilation, channels-last layout and the VAE batch are
  left out: they change an image by float rounding at most (items carry their own seeds).
* `item_fingerprint(settings, item, root)`: the settings' digest plus what the work item itself
  names (class, index, seed, prompt, positive and negative files relative to the data root, so a
  moved dataset keeps its images). A finished image is reused only when its record carries the
  same fingerprint.
* `set_key(config)`: the name of the folder of a synthetic set, from the settings and the inputs
  that decide the work items (the data, the prompts, the negatives' similarity).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthshot.io import json_digest, relative_to_root

FINGERPRINT_FORMAT = "synthshot-image-1"


def image_settings(config) -> dict:
    """The settings every image of a synthetic set is made with (a `RunConfig` with models resolved)."""
    gen, models = config.generation, config.models
    adapters = gen.mode != "text"
    settings: dict[str, Any] = {
        "format": FINGERPRINT_FORMAT,
        "mode": gen.mode,
        "seed": config.seed,
        "w_text": gen.w_text,
        "steps": gen.steps,
        "scheduler": gen.scheduler,
        "size": [gen.width, gen.height],
        "precision": gen.precision,
        "attention": gen.attention,
        "empty_text": gen.empty_text,
        "image_format": "jpg" if gen.image_format in ("jpg", "jpeg") else gen.image_format,
        "models": {"diffusion": models.diffusion, "revision": models.revision},
    }
    if gen.timestep_schedule != "default":
        settings["timestep_schedule"] = gen.timestep_schedule
    if gen.cache_interval not in (None, 1):
        settings["cache_interval"] = gen.cache_interval
    if adapters and tuple(gen.image_guidance_interval) != (0.0, 1.0):
        settings["image_guidance_interval"] = list(gen.image_guidance_interval)
    if adapters:
        settings.update(w_pos=gen.w_pos, ip_adapter_scale=gen.ip_adapter_scale, augment=gen.augment)
        settings["models"].update(ip_adapter=models.ip_adapter, ip_adapter_subfolder=models.ip_adapter_subfolder,
                                  ip_adapter_weights=list(models.ip_adapter_weights),
                                  image_encoder=models.image_encoder,
                                  image_encoder_subfolder=models.image_encoder_subfolder)
    if gen.mode == "dual":
        sim = config.similarity
        settings["w_neg"] = gen.w_neg
        settings["negatives"] = {"sampling": sim.sampling}
        if sim.sampling == "similarity":
            settings["negatives"].update(method=sim.method, temperature=sim.temperature, clip=models.clip)
            if sim.method == "class_mean":  # the official form since similarity format 2
                settings["negatives"]["formula"] = "mean of raw embeddings"
    return settings


def settings_digest(settings: dict) -> str:
    return json_digest(settings)


def set_key(config) -> str:
    """12 hex digits naming the synthetic set of `config` (models resolved): equal for runs whose
    images would be equal, whatever their images per class."""
    inputs: dict[str, Any] = {"settings": image_settings(config)}
    data = config.model_dump(mode="json")["data"]
    data.pop("holdout_shots", None)  # which images are held out for testing does not change an image
    inputs["data"] = data
    gen = config.generation
    inputs["prompts_source"] = {"template": gen.template, "prompt_cycle": gen.prompt_cycle,
                                "prompts_file": str(gen.prompts_file) if gen.prompts_file else None}
    if "prompts" in config.stages and gen.prompts_file is None:
        prompts = config.prompts.model_dump(mode="json")
        for key in ("cache_dir", "timeout", "max_retries"):  # how the answers are fetched, not what they are
            prompts.pop(key, None)
        inputs["prompts"] = prompts
    return json_digest(inputs)[:12]


def _relative(path: str | None, root: Path | None) -> str | None:
    return path if path is None or root is None else relative_to_root(path, root)


def item_fingerprint(settings: str, item, root: Path | None = None) -> str:
    """The fingerprint of one work item's image under `settings` (a `settings_digest`)."""
    return json_digest({
        "settings": settings,
        "class_name": item.class_name,
        "index": item.index,
        "seed": item.seed,
        "prompt": item.prompt,
        "positive_file": _relative(item.positive_file, root),
        "negative_class": item.negative_class,
        "negative_file": _relative(item.negative_file, root),
    })[:32]
