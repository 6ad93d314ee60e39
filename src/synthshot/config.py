"""Typed configuration: YAML files mapped onto pydantic models, with dotted command-line overrides.

Every stage reads its own section (`data`, `models`, `similarity`, `generation`); `RunConfig`
holds them all plus what they share (output folder, seed, device, offline mode). Unknown keys
and values of the wrong type are errors that name the key and, for a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthshot.errors import ConfigError

Precision = Literal["fp32", "fp16", "bf16"]


class Section(BaseModel):
    """A config section: unknown keys are errors, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    """Which models to load. Each is a hub id or a local folder in the hub's layout."""

    tiny_kit: Path | None = Field(
        None,
        description="Build the offline tiny model kit in this folder (if missing) and use its "
        "models instead of the ids below.",
    )
    diffusion: str = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="Stable Diffusion pipeline (diffusers layout).",
    )
    ip_adapter: str = Field("h94/IP-Adapter", description="Repository or folder holding the IP-Adapter weights.")
    ip_adapter_subfolder: str = Field("models", description="Folder of `ip_adapter` that holds the weight files.")
    ip_adapter_weights: list[str] = Field(
        default_factory=lambda: ["ip-adapter-plus_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"],
        description="Adapter weight files (safetensors): positive adapter first, negative second.",
    )
    image_encoder: str | None = Field(
        None,
        description="IP-Adapter image encoder as a hub id or folder; default: `image_encoder_subfolder` "
        "of the `ip_adapter` repository.",
    )
    image_encoder_subfolder: str = Field(
        "models/image_encoder",
        description="Folder of the `ip_adapter` repository holding the image encoder, used when `image_encoder` "
        "is unset.",
    )
    clip: str = Field("openai/clip-vit-base-patch16", description="CLIP model for similarity and classification.")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of the hub models; local folders ignore it."
    )
    cache_dir: Path | None = Field(None, description="Hub download cache; default: Hugging Face's (HF_HOME).")


class DemoDataConfig(Section):
    """A small dataset of drawn shapes that synthshot makes itself, for the offline quickstart."""

    classes: int = Field(4, ge=2, le=8, description="Number of classes, one shape each (circle, square, ...).")
    images_per_class: int = Field(8, ge=1, description="Images drawn per class.")
    size: int = Field(64, ge=16, description="Side of each square image, in pixels.")
    seed: int = Field(0, description="Seed of the drawing (same seed, same bytes).")


class DataConfig(Section):
    """Where the few labelled images come from and how the few-shot split is drawn."""

    root: Path | None = Field(None, description="Image folder (root/<class>/<image>) or a peer layout.")
    dataset: str | None = Field(None, description="Registry name (class names for prompts, prompt template).")
    layout: Literal["auto", "imagefolder", "fewshot_seed", "shot_seed", "coop"] = Field(
        "auto",
        description="How root is laid out: imagefolder (root/<class>/<image>), fewshot_seed "
        "(root[/real_train_fewshot]/seed<S>/<class>/), shot_seed (root/shot<K>_seed<S>/<class>/), coop (a CoOp "
        "split file, see split_file), or auto (imagefolder or a peer layout, detected from the folder names).",
    )
    split_file: Path | None = Field(
        None,
        description="layout coop: the split JSON ([path, label, classname] lists, paths relative to root); "
        "default: root/synthshot/split_coop.json as written by `synthshot datasets prepare`.",
    )
    shots: int = Field(16, ge=0, description="Real images per class; 0 = zero-shot (class names only).")
    split_seed: int = Field(
        1,
        description="Seed of the few-shot draw (splits of one seed are nested across shot counts) and the seed<S> "
        "folder of the peer layouts; `seeds` sets it per run.",
    )
    allow_fewer: bool = Field(False, description="Allow classes with fewer than `shots` images.")
    skip_corrupt: bool = Field(False, description="Skip unreadable images with a warning instead of failing.")
    demo: DemoDataConfig | None = Field(None, description="Draw a demo dataset into <output_dir>/demo-data.")
    holdout_shots: int | None = Field(
        None,
        ge=1,
        description="`heldout` test and validation sets leave out the few-shot split of this many shots (the "
        "splits are nested), so every run of a shots sweep is tested on the same images; a sweep over data.shots "
        "sets it to its largest value; default: data.shots.",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str | None) -> str | None:
        if value is not None:
            from synthshot.data.registry import get_dataset
            from synthshot.errors import DataError

            try:
                get_dataset(value)
            except DataError as exc:  # the registry's message names the closest dataset
                raise ValueError(str(exc)) from None
        return value


class SimilarityConfig(Section):
    """Class similarity from CLIP image embeddings and the negative-class distribution (DIPSY)."""

    method: Literal["class_mean", "normalized_mean", "pairwise_mean"] = Field(
        "class_mean",
        description="class_mean: cosines of the means of each class's raw image embeddings (the official code); "
        "normalized_mean: the same with every embedding normalised first; pairwise_mean: the mean cosine over "
        "all image pairs (the paper's prose).",
    )
    temperature: float = Field(
        0.4, gt=0, description="Softmax temperature of the negative-class distribution; lower puts more of it on the "
        "most similar classes (DIPSY: 0.4).",
    )
    sampling: Literal["similarity", "uniform"] = Field(
        "similarity", description="How dual generation draws each image's negative class: from that distribution, or "
        "uniformly among the other classes (DIPSY's ablation).",
    )
    batch_size: int = Field(32, ge=1, description="Images per CLIP forward when embedding the few-shot images.")


class GenerationConfig(Section):
    """Synthetic image generation with dual IP-Adapter guidance (DIPSY Eq. 9)."""

    mode: Literal["dual", "single", "text"] = Field(
        "dual",
        description="dual: a positive and a negative IP-Adapter image (DIPSY Eq. 9); single: the positive only "
        "(Eq. 8); text: Stable Diffusion from the prompt alone.",
    )
    images_per_class: int = Field(200, ge=1, description="Synthetic images per class (DIPSY: 200; LGCLIP: 10).")
    w_text: float = Field(7.5, ge=0, description="Text (classifier-free) guidance scale (DIPSY: 7.5).")
    w_pos: float = Field(
        6.0, ge=0, description="Guidance scale toward the positive image (DIPSY: 6.0); modes dual and single."
    )
    w_neg: float = Field(6.0, ge=0, description="Guidance scale away from the negative image (DIPSY: 6.0); mode dual.")
    ip_adapter_scale: float = Field(0.6, ge=0, description="Weight of the IP-Adapters' image attention (DIPSY: 0.6).")
    steps: int = Field(50, ge=1, description="Denoising steps per image (DIPSY: 50).")
    scheduler: Literal["dpm", "ddim", "euler", "default"] = Field(
        "dpm", description="DPM-Solver multistep (DIPSY), DDIM, Euler, or the pipeline's own (default)."
    )
    height: int = Field(512, ge=8, description="Image height in pixels, a multiple of 8 (DIPSY: 512).")
    width: int = Field(512, ge=8, description="Image width in pixels, a multiple of 8 (DIPSY: 512).")
    precision: Precision = Field("fp16", description="Stable Diffusion's precision; always fp32 on the CPU.")
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="PyTorch's scaled-dot-product attention, or the plain matmul-softmax processors (eager)."
    )
    compile: bool = Field(
        False, description="torch.compile the UNet (static shapes: one compilation per batch size, none between "
        "batches): a slower start, faster steps; an error where the device's compiler backend is missing.",
    )
    timestep_schedule: Literal["default", "ays"] = Field(
        "default", description="default: the scheduler's own spacing of the steps; ays: Align Your Steps' SD-1.5 "
        "timesteps (10 steps, log-linearly interpolated in noise level to other counts; schedulers dpm and euler).",
    )
    image_guidance_interval: tuple[float, float] = Field(
        (0.0, 1.0), description="[lo, hi]: the image branches (positive, negative) run only at the steps whose "
        "fraction of the trajectory done, i / steps for step i = 0, 1, ..., lies in [lo, hi) (0 = the first, "
        "noisiest step); elsewhere plain text guidance with half the U-Net evaluations (Kynkaanniemi et al. 2024). "
        "Default [0, 1]: every step (DIPSY).",
    )
    cache_interval: int | None = Field(
        None, ge=1, description="DeepCache: run the whole U-Net every k-th step and only its shallowest blocks in "
        "between, reusing the deep features (for all guidance branches at once); null or 1: off (DIPSY).",
    )
    channels_last: bool = Field(False, description="Channels-last memory layout for the UNet and the VAE (faster convolutions on many GPUs).")
    vae_batch_size: int | None = Field(
        None, ge=1, description="Decode at most this many latents per VAE call (bounds memory); null: the whole batch."
    )
    batch_size: int = Field(4, ge=1, description="Images per denoising batch.")
    template: str | None = Field(None, description="Prompt template with `{}`; default: the dataset's.")
    empty_text: bool = Field(False, description="Ablation: an empty prompt instead of the class prompt.")
    augment: bool = Field(
        True, description="Randomly flip, crop and rotate each IP-Adapter input image (DIPSY Sec. 3.4); false: the "
        "ablation without.",
    )
    image_format: Literal["png", "jpeg"] = Field(
        "png", description="png (lossless) or jpeg (quality 95, as DIPSY's official code)."
    )
    prompts_file: Path | None = Field(
        None,
        description="prompts.json (class -> prompts) to draw prompts from; default: the `prompts` stage's "
        "output when the run has that stage, else the template.",
    )
    prompt_cycle: Literal["all", "first"] = Field(
        "all", description="Cycle through all of a class's prompts, or use only the first (LGCLIP's official code)."
    )

    @field_validator("template")
    @classmethod
    def _template_has_slot(cls, value: str | None) -> str | None:
        if value is not None and "{}" not in value:
            raise ValueError(f"template {value!r} has no '{{}}' where the class name goes")
        return value

    @field_validator("image_guidance_interval")
    @classmethod
    def _interval_in_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        from synthshot.generation.guidance import check_interval

        try:
            return check_interval(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _schedule_fits_scheduler(self):
        if self.timestep_schedule == "ays" and self.scheduler not in ("dpm", "euler", "default"):
            raise ValueError(
                f"generation.timestep_schedule ays needs a scheduler that takes given timesteps (dpm, euler), "
                f"not generation.scheduler {self.scheduler}"
            )
        return self


class PromptsConfig(Section):
    """Class prompts for text-to-image prototypes (LGCLIP): registry templates or an LLM."""

    backend: Literal["template", "openai", "transformers"] = Field(
        "template",
        description="template: the dataset's prompt templates (no model); openai: an OpenAI-compatible chat endpoint "
        "(base_url); transformers: a chat model run locally with transformers (model).",
    )
    per_class: int = Field(10, ge=1, description="Prompts per class (LGCLIP: 10).")
    model: str | None = Field(None, description="LLM: the endpoint's model name (openai) or a hub id / folder (transformers).")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (never the key itself); null: send no "
        "key. Unset, it is an error unless the endpoint is on localhost (then no key is sent).",
    )
    temperature: float = Field(
        0.8, ge=0, description="Sampling temperature of a class's first request; each re-ask adds 0.1, up to 1.0."
    )
    max_new_tokens: int = Field(512, ge=16, description="Tokens per answer; an answer cut off at it loses its last line.")
    timeout: float = Field(60.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(3, ge=0, description="Extra requests per class after a failure or too few prompts.")
    per_request: int | None = Field(
        None, ge=1, description="Ask for at most this many prompts per request (a slow server, a small context); "
        "default: all those still missing.",
    )
    min_per_class: int | None = Field(
        None, ge=1, description="Go on with a warning when a class ends with fewer than per_class but at least this "
        "many valid prompts; default: per_class, or 1 with generation.prompt_cycle: first (only the first is drawn).",
    )
    instruction: str | None = Field(None, description="LLM instruction with {n} and {name}; default: LGCLIP's.")
    min_chars: int = Field(12, ge=1, description="Reject LLM prompts shorter than this many characters.")
    max_chars: int = Field(300, ge=20, description="Reject LLM prompts longer than this many characters.")
    max_tokens: int | None = Field(
        None, ge=3, description="Reject LLM prompts longer than this many tokens of models.diffusion's CLIP tokenizer "
        "(start and end tokens included; its text encoder reads 77 and cuts the rest); default: no limit.",
    )
    near_duplicate: float = Field(
        0.97, gt=0, le=1, description="Drop a prompt this similar (difflib ratio of the lower-case text without "
        "punctuation) to one already kept, as a near-duplicate (0.97: a changed letter or two); 1: only exact repeats.",
    )
    cache_dir: Path | None = Field(None, description="Response cache; default: <output_dir>/prompts/cache.")

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _api_key_env_is_a_name(cls, value):
        from synthshot.prompts.backends import check_api_key_env  # its ConfigError never shows the value

        return check_api_key_env(value)


class EvalDataConfig(Section):
    """Labelled images to evaluate on: an image folder, a CoOp split file, or the images of
    `data.root` left out of the few-shot split."""

    source: Literal["heldout", "folder", "coop"] = Field(
        "heldout",
        description="heldout: the images of data.root not in the few-shot split (see data.holdout_shots); folder: "
        "the image folder `root`; coop: the `split` list of a CoOp split file.",
    )
    root: Path | None = Field(
        None, description="folder: root/<class>/<image>; coop: the image root of the split file (default: data.root)."
    )
    split_file: Path | None = Field(
        None, description="coop: the split JSON ([path, label, classname] lists); default: the data's split file."
    )
    split: Literal["train", "val", "test"] = Field("test", description="coop: which list of the split file to read.")
    max_per_class: int | None = Field(None, ge=1, description="Evaluate on at most this many images per class (seeded).")


class FeaturesConfig(Section):
    """CLIP image features, single- or multi-scale (LGCLIP), cached per file."""

    multiscale: bool = Field(
        False, description="LGCLIP's multi-scale feature: the weighted mean of the features of crops at `scales`; "
        "false: one feature of the whole image.",
    )
    scales: list[int] = Field(
        default_factory=lambda: list(range(1, 11)),
        description="Crop areas s/10 of the image, distinct integers in 1..10, each weighted s / sum(scales) "
        "(LGCLIP: 1..10).",
    )
    seed: int = Field(0, description="Seed of the multi-scale crops (mixed with each image's pixels).")
    batch_size: int = Field(32, ge=1, description="Images per encoder forward (all their crops together).")
    precision: Precision = Field("fp32", description="Precision of the CLIP image encoder; always fp32 on the CPU.")
    backend: Literal["auto", "transformers", "open_clip"] = Field(
        "auto", description="Library that loads models.clip; auto: open_clip for `open_clip:` and `hf-hub:` names, "
        "else transformers.",
    )
    adapter: Path | None = Field(None, description="A LoRA adapter folder saved by `synthshot finetune`.")

    @field_validator("scales")
    @classmethod
    def _scales_in_range(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= s <= 10 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"scales must be distinct integers in 1..10, got {value}")
        return sorted(value)


class ClassifierConfig(Section):
    """Training-free classifiers over CLIP features (`prototypes`, `evaluate`)."""

    methods: list[Literal["prototypes", "text", "combined", "tip_adapter"]] = Field(
        default_factory=lambda: ["prototypes", "text", "combined", "tip_adapter"],
        description="Classifiers `evaluate` scores: prototypes (the class means of the synthetic features, LGCLIP), "
        "text (CLIP zero-shot), combined (a mixture of the two), tip_adapter (a cache model of the synthetic "
        "features).",
    )
    score: Literal["dot", "cosine"] = Field("dot", description="Prototype scoring: dot product (official) or cosine.")
    text_templates: Literal["single", "ensemble"] = Field(
        "single", description="Class prompts of the text classifiers: the dataset's first zero-shot template, or all "
        "of them averaged.",
    )
    combine_weight: float = Field(0.5, ge=0, le=1, description="Weight of the image prototypes in `combined`.")
    tip_alpha: list[float] = Field(
        default_factory=lambda: [0.1, 0.5, 1.0, 2.0, 5.0],
        description="Tip-Adapter's alpha (weight of the cache) values searched on validation data; without it, 1.0.",
    )
    tip_beta: list[float] = Field(
        default_factory=lambda: [1.0, 3.0, 5.5, 7.0, 10.0],
        description="Tip-Adapter's beta (sharpness of the affinities) values searched on validation data; without "
        "it, 5.5.",
    )
    test: EvalDataConfig = Field(
        default_factory=EvalDataConfig, description="Test data of the classifiers: reported, never used to choose."
    )
    val: EvalDataConfig | None = Field(None, description="Validation data to choose alpha/beta and combine weight.")


# Named fine-tuning recipes: the values a recipe gives the keys a config does not set itself (any
# key set in a preset, a file or an override wins). `datadream` is the field defaults below.
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    # DataDream (Kim et al., ECCV 2024), as DIPSY fine-tunes: LoRA r 16 on q, k, v, out of both
    # towers, AdamW 1e-4, warm-up then cosine, DISEF's augmentation, the epoch best on validation.
    "datadream": {},
    # CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): LoRA r 2, alpha 1, dropout 0.25 on q, k, v of
    # every layer of both encoders; AdamW 2e-4, weight decay 1e-2, batch 32, cosine decay to 1e-6
    # without warm-up; 500 x shots iterations; random resized crop and flip only; the final weights.
    "clip-lora": {
        "lora_r": 2, "lora_alpha": 1, "lora_dropout": 0.25, "lora_targets": ["q_proj", "k_proj", "v_proj"],
        "towers": ["vision", "text"], "lr": 2e-4, "weight_decay": 1e-2, "batch_size": 32, "min_lr": 1e-6,
        "warmup_steps": 0, "iterations_per_shot": 500, "select": "last", "crop_scale": [0.08, 1.0],
        "randaugment_ops": 0, "color_jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0,
        "solarize_prob": 0.0,
    },
}


class FinetuneConfig(Section):
    """CLIP + LoRA fine-tuning on real and synthetic images (DIPSY Eq. 10)."""

    recipe: Literal["datadream", "clip-lora"] = Field(
        "datadream",
        description="Named settings: datadream (DataDream / DIPSY) or clip-lora (CLIP-LoRA); keys set explicitly win.",
    )
    lam: float = Field(0.8, ge=0, le=1, description="Weight of the real-image loss; 1 = real only, 0 = synthetic only.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (DIPSY: 16).")
    lora_alpha: float = Field(32, gt=0, description="LoRA alpha: the update is scaled by alpha / r (DIPSY: 32).")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the input of the LoRA matrices (DIPSY: 0.1).")
    lora_targets: list[Literal["q_proj", "k_proj", "v_proj", "out_proj"]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        min_length=1,
        description="Attention projections that get LoRA, in every layer of the chosen towers.",
    )
    towers: list[Literal["vision", "text"]] = Field(
        default_factory=lambda: ["vision", "text"], min_length=1,
        description="CLIP encoders that are adapted; a tower left out stays frozen.",
    )
    text_templates: Literal["single", "ensemble"] = Field(
        "single", description="Class prompts: the dataset's first zero-shot template, or all of them averaged."
    )
    lr: float = Field(1e-4, gt=0, lt=1, description="Peak AdamW learning rate (DIPSY: 1e-4).")
    min_lr: float = Field(1e-8, ge=0, description="Learning rate at the end of the cosine schedule.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (the dipsy presets: 1e-4).")
    epochs: int = Field(10, ge=1, description="Training is cut into this many epochs (a checkpoint and validation each).")
    warmup_steps: int = Field(50, ge=0, description="Steps of linear learning-rate warm-up before the cosine decay.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="At most this many steps per epoch (quick runs); default: one pass over the data."
    )
    iterations: int | None = Field(
        None, ge=1, description="Train for exactly this many steps in all (cycling the data), split over the epochs."
    )
    iterations_per_shot: int | None = Field(
        None, ge=1, description="iterations = this x data.shots (CLIP-LoRA: 500); `iterations` wins when both are set."
    )
    select: Literal["val", "last"] = Field(
        "val", description="The adapter kept: the epoch best on validation (the last without validation data), or the last."
    )
    batch_size: int = Field(32, ge=2, description="Images per step and process, even: half real, half synthetic.")
    eval_batch_size: int = Field(64, ge=1, description="Images per forward when evaluating validation and test data.")
    precision: Precision = Field(
        "bf16", description="Mixed precision of training: fp32 on the CPU, fp16 on GPUs without bf16."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower steps."
    )
    augment: bool = Field(
        True, description="Augment the training images (the keys below); false: the evaluation preprocessing only."
    )
    crop_scale: tuple[float, float] = Field((0.25, 1.0), description="Random resized crop: range of the area kept.")
    randaugment_ops: int = Field(2, ge=0, description="RandAugment operations per image (0 = none).")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment magnitude, of 30 (torchvision's).")
    color_jitter_prob: float = Field(
        0.8, ge=0, le=1,
        description="Probability of colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1).",
    )
    grayscale_prob: float = Field(0.2, ge=0, le=1, description="Probability of turning an image to grayscale.")
    blur_prob: float = Field(0.2, ge=0, le=1, description="Probability of a Gaussian blur (radius 0.1 to 2 pixels).")
    solarize_prob: float = Field(0.2, ge=0, le=1, description="Probability of solarizing an image (threshold 128).")
    num_workers: int = Field(
        2, ge=0, description="Data-loading worker processes per process, at most the CPUs available; 0: in-process."
    )
    log_every: int = Field(10, ge=1, description="Steps between lines of metrics.jsonl.")
    tensorboard: bool = Field(
        False, description="Also log to TensorBoard in <output_dir>/finetune/trackers (the same as trackers: "
        "[tensorboard]; needs the tensorboard package); metrics.jsonl is written either way.",
    )
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers for the fine-tuning curves and results, through accelerate: tensorboard "
        "(in <output_dir>/finetune/trackers) and/or wandb (Weights & Biases); each needs its package (extras "
        "synthshot[tensorboard], synthshot[wandb]).",
    )
    val: EvalDataConfig | None = Field(
        None, description="Validation data that chooses the epoch kept (select: val); default: none, the last epoch."
    )
    test: EvalDataConfig = Field(
        default_factory=EvalDataConfig,
        description="Test data, evaluated once with the adapter kept; never used to choose.",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _recipe_defaults(cls, data: Any, handler):
        """Fill the keys the config leaves out from its recipe; they stay out of the fields the
        config set (`model_fields_set`), so a sweep over `finetune.recipe` lets each run's recipe
        fill them."""
        if not isinstance(data, dict):
            return handler(data)
        values = FINETUNE_RECIPES.get(data.get("recipe", "datadream"), {})
        config = handler({**values, **data})
        config.__pydantic_fields_set__.difference_update(set(values) - set(data))
        return config

    @property
    def recipe_keys(self) -> frozenset:
        """The keys a recipe may set that the config left out (their values are the recipe's)."""
        managed = {key for recipe in FINETUNE_RECIPES.values() for key in recipe}
        return frozenset(managed - self.model_fields_set)

    def total_iterations(self, shots: int) -> int | None:
        """The number of training steps the config asks for, or None for epochs of one data pass."""
        if self.iterations is not None:
            return self.iterations
        if self.iterations_per_shot is not None:
            if shots < 1:
                raise ConfigError(
                    f"finetune.iterations_per_shot needs data.shots >= 1 (got {shots}): set finetune.iterations"
                )
            return self.iterations_per_shot * shots
        return None

    @field_validator("batch_size")
    @classmethod
    def _batch_size_even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"batch_size must be even (as many real as synthetic images), got {value}")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {list(value)}")
        return value


STAGES = ("data", "prompts", "similarity", "generate", "features", "prototypes", "finetune", "evaluate", "report")
DEFAULT_STAGES = ("data", "similarity", "generate")
Stage = Literal["data", "prompts", "similarity", "generate", "features", "prototypes", "finetune", "evaluate", "report"]


class RunConfig(Section):
    """A whole experiment: shared settings plus one section per stage."""

    preset: str | None = Field(None, description="Start from this preset of synthshot/presets (see `synthshot presets`).")
    output_dir: Path = Field(
        Path("runs/default"),
        description="Folder of the run's outputs (config.resolved.yaml, one folder per stage); sweeps, seeds and "
        "controls put their runs in folders under it.",
    )
    synthetic_dir: Path | None = Field(
        None, description="Where generation writes and readers find the synthetic set; default: output_dir."
    )
    sweep: dict[str, list[Any]] | None = Field(
        None,
        description="Dotted keys -> lists of values; `run` expands them into one named run per combination.",
    )
    seed: int = Field(
        0, description="Seed of generation (each image's draws and noise), fine-tuning (LoRA init, data order, "
        "augmentation) and the max_per_class draw of evaluation sets.",
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    offline: bool = Field(False, description="Never touch the network (sets HF_HUB_OFFLINE).")
    stages: list[Stage] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        description="Stages `synthshot run` runs, always in pipeline order (data, prompts, similarity, generate, "
        "features, prototypes, finetune, evaluate, report).",
    )
    seeds: list[int] | None = Field(
        None,
        description="One run per seed in output_dir/seed=<n> (the seed and data.split_seed both set to it), "
        "summarised as mean and standard deviation in the run's own results.json, table and plots.",
    )
    controls: list[Literal["real-only", "text-sd"]] = Field(
        default_factory=list,
        description="Control runs beside the method, in output_dir/controls/<name>: real-only (finetune.lam=1, no "
        "synthetic image, the same recipe) and text-sd (generation.mode=text: Stable Diffusion from the text alone).",
    )
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {value}")
        return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `a.b.c=value` override; the value is read as YAML (`3`, `true`, `[1, 2]`, `text`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. generation.steps=20)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    return [part.strip() for part in key.split(".")], value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
            "save it with UTF-8 encoding"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(tree).__name__}")
    return tree


PRESETS_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of a preset shipped with synthshot; only those names are accepted (a name is never
    a path, so it cannot reach outside the presets folder)."""
    known = list_presets()
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}: {hint}known presets: {', '.join(known)}")
    return path


def merge_trees(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section (lists and values of `top` replace those of `base`)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def expand_presets(tree: dict, seen: tuple[str, ...] = ()) -> dict:
    """Put the tree's `preset` (and the presets it names in turn) underneath it."""
    name = tree.get("preset")
    if name is None:
        return tree
    if not isinstance(name, str):
        raise ConfigError(f"preset must be a preset name, got {name!r}")
    if name in seen:
        raise ConfigError(f"presets name each other in a loop: {' -> '.join([*seen, name])}")
    base = expand_presets(read_yaml(preset_path(name)), (*seen, name))
    return merge_trees(base, tree)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or a preset name, or start from the defaults), apply `key=value`
    overrides, validate."""
    if path is not None and not Path(path).is_file() and Path(path).suffix not in (".yaml", ".yml"):
        tree = {"preset": str(path)}  # a preset name; an unknown one is an error naming the closest
    else:
        tree = read_yaml(path) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    tree = expand_presets(tree)
    return validate_config(tree, RunConfig, source=str(path) if path else "config")


def validate_config(tree: dict, model: type[BaseModel], source: str = "config") -> Any:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, model)}") from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first problem: the dotted key, what is wrong, and the closest valid key."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        valid = _field_names(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else f"valid keys here: {', '.join(valid)}"
        return f"unknown key {key}: {hint}"
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    if error["type"] == "literal_error" and isinstance(got, str):
        expected = re.findall(r"'([^']*)'", error.get("ctx", {}).get("expected", ""))
        close = difflib.get_close_matches(got, expected, n=1, cutoff=0.5)
        if close:
            return f"key {key}: {got!r} is not one of {', '.join(expected)}; did you mean {close[0]!r}?"
    return f"key {key}: {error['msg'].lower()}{got_text}"


def _field_names(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The valid keys of the section at `loc` (a list of field names from the root model)."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = _section_type(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _section_type(annotation: Any) -> Any:
    """The BaseModel inside an annotation such as `DemoDataConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, written next to every output."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_resolved_config(config: BaseModel, folder: str | Path) -> Path:
    from synthshot.io import atomic_write_text

    path = Path(folder) / "config.resolved.yaml"
    atomic_write_text(path, dump_config(config))
    return path
