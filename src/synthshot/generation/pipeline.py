"""Stable Diffusion with a positive and a negative IP-Adapter, all guidance branches of a denoising
step in one U-Net call (DIPSY, BMVC 2025).

Per step DIPSY needs four noise predictions of the same latent (DIPSY Eq. 9):

    e0 = eps(x | no text, no image)      eT = eps(x | text)
    eP = eps(x | text, positive image)   eN = eps(x | text, positive image, negative image)

"Conditioned on an image" means that adapter is active at its IP scale; "not conditioned" means it
contributes nothing, exactly as with the adapter's scale at 0. Diffusers' adapter scale is global to
the U-Net, which is why the official code runs 3 U-Net calls of batch 2 per step. Here each adapter
is gated per sample instead: the adapter's image tokens are multiplied by 0 or 1 for each row of
the batch. The adapter's key and value projections have no bias, so zero tokens give zero keys and
values and its attention adds exactly nothing, the same as a scale of 0; tokens times 1 are the
adapter at its scale. The four branches then go through the U-Net as one batch of 4 per image.

The image tokens do not change during denoising, so each image is projected once, here, rather
than at every step inside the U-Net: the U-Net's own projection module is replaced by
`ProjectedImageTokens`, which passes the gated tokens through.

Options that trade work for speed (all off by default, which is DIPSY's own behaviour):

* a guidance interval: the image branches run only on part of the trajectory, elsewhere only
  [e0, eT] (plain classifier-free guidance, half the U-Net evaluations in dual mode);
* DeepCache (`synthshot.generation.deepcache`): every k-th step runs the whole U-Net, the steps in
  between only its shallow blocks, for all branches of the batch at once;
* Align Your Steps timesteps (`synthshot.generation.schedules`), decoding in VAE batches, and
  `compile` (static shapes, so a batch of a size already seen never recompiles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
)
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from synthshot.errors import ConfigError, ModelError
from synthshot.generation.deepcache import DeepCacheUNet
from synthshot.generation.guidance import (
    FULL_INTERVAL,
    check_cache_interval,
    check_interval,
    check_scale,
    dual_ip_guidance,
    guidance_branches,
    step_plan,
)
from synthshot.generation.schedules import check_schedule, set_timesteps

Mode = Literal["dual", "single", "text"]
IP_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)


class ProjectedImageTokens(torch.nn.Module):
    """Stands in the U-Net for its IP-Adapter image projection: the pipeline projects each image
    once and hands the U-Net the projected, gated tokens, which pass through unchanged."""

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        return image_embeds


@dataclass
class DualIPAdapterOutput:
    images: Any  # list of PIL images, or a tensor for output_type "pt" / "latent"


class DualIPAdapterPipeline(DiffusionPipeline):
    """Text-to-image with up to two IP-Adapters: adapter 0 conditions on the positive image,
    adapter 1 on the negative image. Build it with `from_sd_pipeline` from a
    `StableDiffusionPipeline` whose adapters were loaded by `synthshot.models.diffusion`."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        image_projection: MultiIPAdapterImageProjection | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            image_projection=image_projection,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._compiled: dict[str, Any] = {}  # "unet", "full", "shallow": compiled callables (see `compile`)

    @classmethod
    def from_sd_pipeline(cls, pipe) -> "DualIPAdapterPipeline":
        """Take over the components of a `StableDiffusionPipeline` (with 0, 1 or 2 IP-Adapters
        loaded). The U-Net is modified in place: its image projection moves to this pipeline."""
        unet = pipe.unet
        projection = getattr(unet, "encoder_hid_proj", None)
        if projection is not None and not isinstance(projection, MultiIPAdapterImageProjection):
            raise ModelError(f"the U-Net's encoder_hid_proj is a {type(projection).__name__}, not IP-Adapter projections")
        if projection is not None:
            unet.encoder_hid_proj = ProjectedImageTokens()
        return cls(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=unet,
            scheduler=pipe.scheduler,
            image_encoder=getattr(pipe, "image_encoder", None),
            feature_extractor=getattr(pipe, "feature_extractor", None),
            image_projection=projection,
        )

    # ----------------------------------------------------------------------------------- set-up
    @property
    def num_adapters(self) -> int:
        return 0 if self.image_projection is None else len(self.image_projection.image_projection_layers)

    def set_ip_adapter_scale(self, scale: float) -> None:
        """The IP scale of every adapter (a magnitude >= 0); per-sample gates decide which is on."""
        scale = check_scale("ip_adapter_scale", scale)
        for processor in self.unet.attn_processors.values():
            if isinstance(processor, IP_PROCESSORS):
                processor.scale = [scale] * len(processor.scale)

    def set_attention(self, kind: Literal["sdpa", "eager"]) -> None:
        """Scaled-dot-product attention (default) or the plain matmul-softmax processors."""
        if kind not in ("sdpa", "eager"):
            raise ConfigError(f"attention {kind!r} is not one of sdpa, eager")
        plain, ip = (AttnProcessor2_0, IPAdapterAttnProcessor2_0) if kind == "sdpa" else (AttnProcessor, IPAdapterAttnProcessor)
        processors = {}
        for name, old in self.unet.attn_processors.items():
            if isinstance(old, IP_PROCESSORS):
                new = ip(old.hidden_size, old.cross_attention_dim, old.num_tokens, old.scale)
                new.load_state_dict(old.state_dict())
                processors[name] = new.to(device=self.unet.device, dtype=self.unet.dtype)
            else:
                processors[name] = plain()
        self.unet.set_attn_processor(processors)

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """torch.compile the U-Net (and DeepCache's two passes) with static shapes: the gates are
        tensors inside the image tokens and the branches of a batch always stack the same way, so
        each batch size (and, with a guidance interval, each of its two branch counts) compiles
        once, and later batches of a size already seen run without recompiling."""
        options = {"backend": backend, "mode": mode, "dynamic": False}
        self._compiled = {"unet": torch.compile(self.unet, **options)}
        try:
            cache = DeepCacheUNet(self.unet)
        except ModelError:  # a U-Net DeepCache does not support: caching is refused when asked for
            return
        self._compiled.update(full=torch.compile(cache.full, **options), shallow=torch.compile(cache.shallow, **options))

    def to_channels_last(self) -> None:
        """Channels-last memory layout for the U-Net and the VAE (same results up to float rounding)."""
        self.unet.to(memory_format=torch.channels_last)
        self.vae.to(memory_format=torch.channels_last)

    def _unet_calls(self, cache: bool):
        """(whole U-Net, DeepCache full, DeepCache shallow): compiled when `compile` was called."""
        unet = self._compiled.get("unet", self.unet)
        if not cache:
            return unet, None, None
        deep = DeepCacheUNet(self.unet)
        return unet, self._compiled.get("full", deep.full), self._compiled.get("shallow", deep.shallow)

    # ----------------------------------------------------------------------------------- stages
    def check_inputs(self, prompts: list[str], positive, negative, mode: Mode, height: int, width: int) -> None:
        guidance_branches(mode)
        if mode in ("single", "dual"):
            needed = 1 if mode == "single" else 2
            if self.num_adapters < needed:
                raise ConfigError(
                    f"mode {mode!r} needs {needed} IP-Adapter(s) but {self.num_adapters} are loaded: "
                    "set models.ip_adapter_weights (positive first, negative second) or use mode=text"
                )
            if positive is None or len(positive) != len(prompts):
                raise ConfigError(f"mode {mode!r} needs one positive image per prompt ({len(prompts)} prompts)")
        if mode == "dual" and (negative is None or len(negative) != len(prompts)):
            raise ConfigError(f"mode 'dual' needs one negative image per prompt ({len(prompts)} prompts)")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ConfigError(f"image size {width}x{height} must be a multiple of {self.vae_scale_factor}")

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text-encoder hidden states, padded to the tokenizer's length (as SD does)."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        embeds = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return embeds.to(dtype=self.unet.dtype)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], adapter: int) -> torch.Tensor:
        """Image tokens of one adapter, [B, 1, tokens, dim]: the image encoder's pooled embedding
        (ip-adapter) or penultimate hidden states (ip-adapter-plus), projected by that adapter."""
        layer = self.image_projection.image_projection_layers[adapter]
        pixels = self.feature_extractor(images, return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.image_encoder.dtype)
        if isinstance(layer, ImageProjection):
            features = self.image_encoder(pixels).image_embeds
        else:
            features = self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return layer(features.to(self.unet.dtype)).unsqueeze(1)

    def prepare_latents(self, batch: int, height: int, width: int, generator) -> torch.Tensor:
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        return latents * self.scheduler.init_noise_sigma

    @staticmethod
    def branch_gates(mode: Mode, batch: int, device, dtype) -> list[torch.Tensor]:
        """Per-adapter 0/1 gates over the stacked branches [e0, eT, (eP), (eN)], each repeated for
        the `batch` images: the positive adapter is on in eP and eN, the negative one in eN only."""
        rows = {"text": [], "single": [[0, 0, 1]], "dual": [[0, 0, 1, 1], [0, 0, 0, 1]]}[mode]
        return [
            torch.tensor(row, device=device, dtype=dtype).repeat_interleave(batch).view(-1, 1, 1, 1) for row in rows
        ]

    # ----------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        positive_image: Image.Image | list[Image.Image] | None = None,
        negative_image: Image.Image | list[Image.Image] | None = None,
        *,
        w_text: float = 7.5,
        w_pos: float = 6.0,
        w_neg: float = 6.0,
        ip_adapter_scale: float = 0.6,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        negative_prompt: str = "",
        output_type: Literal["pil", "pt", "np", "latent"] = "pil",
        mode: Mode = "dual",
        image_guidance_interval: tuple[float, float] = FULL_INTERVAL,
        cache_interval: int | None = None,
        timestep_schedule: str = "default",
        vae_batch_size: int | None = None,
    ) -> DualIPAdapterOutput:
        """Generate one image per prompt.

        Per step, inside `image_guidance_interval` (fractions of the steps done: step i of N is
        inside when lo <= i / N < hi; default [0, 1], every step) the U-Net evaluates all branches
        of the mode and they combine by DIPSY Eq. 9 (Eq. 8 in single mode). Outside it only the
        unconditional and text branches run and the noise prediction is plain text
        classifier-free guidance, e0 + w_text (eT - e0), exactly what mode "text" computes.
        `cache_interval` k > 1 turns on DeepCache (full U-Net every k-th step, see
        `guidance.step_plan`); 1 or None is off. `timestep_schedule` "ays" uses Align Your Steps'
        timesteps; `vae_batch_size` decodes that many latents per VAE call.
        """
        # 1. Check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        positive = [positive_image] if isinstance(positive_image, Image.Image) else positive_image
        negative = [negative_image] if isinstance(negative_image, Image.Image) else negative_image
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(prompts, positive, negative, mode, height, width)
        for name, value in (("w_text", w_text), ("w_pos", w_pos), ("w_neg", w_neg)):
            check_scale(name, value)
        check_interval(image_guidance_interval)
        cache_interval = check_cache_interval(cache_interval)
        check_schedule(timestep_schedule)
        if vae_batch_size is not None and (
            isinstance(vae_batch_size, bool) or not isinstance(vae_batch_size, int) or vae_batch_size < 1
        ):
            raise ConfigError(f"vae_batch_size must be an integer >= 1 or None, got {vae_batch_size!r}")
        batch = len(prompts)
        branches = guidance_branches(mode)

        # 2. Encode the text: [unconditional x B, prompts x B], repeated for the image branches
        uncond = self.encode_prompt([negative_prompt] * batch)
        text = self.encode_prompt(prompts)
        text_states = torch.cat([uncond] + [text] * (branches - 1))

        # 3. Encode the images once and gate each adapter per branch
        added_cond_kwargs = None
        if self.num_adapters:
            self.set_ip_adapter_scale(ip_adapter_scale)
            sources = [positive, negative][: {"text": 0, "single": 1, "dual": 2}[mode]]
            gates = self.branch_gates(mode, batch, self.device, self.unet.dtype)
            tokens = []
            for adapter in range(self.num_adapters):
                if adapter < len(sources):
                    stacked = self.encode_images(sources[adapter], adapter).repeat(branches, 1, 1, 1)
                    tokens.append(stacked * gates[adapter])
                else:  # an adapter this mode does not use stays off in every branch
                    dim = self.unet.config.cross_attention_dim
                    tokens.append(torch.zeros(branches * batch, 1, 1, dim, device=self.device, dtype=self.unet.dtype))
            added_cond_kwargs = {"image_embeds": tokens}

        # 4. Prepare timesteps and latents
        set_timesteps(self.scheduler, num_inference_steps, timestep_schedule, self.device)
        latents = self.prepare_latents(batch, height, width, generator)
        plan = step_plan(len(self.scheduler.timesteps), mode, image_guidance_interval, cache_interval)
        # The text pair [e0 x B, eT x B] is the first 2B rows of every conditioning tensor.
        conditions = {branches: (text_states, added_cond_kwargs)}
        if branches > 2 and any(not step.image for step in plan):
            conditions[2] = (
                text_states[: 2 * batch],
                None if added_cond_kwargs is None else {"image_embeds": [x[: 2 * batch] for x in tokens]},
            )
        unet, full_pass, shallow_pass = self._unet_calls(cache=cache_interval > 1)

        # 5. Denoising loop: one U-Net call of batch `rows * B` per step (rows = branches inside the
        # guidance interval, 2 outside), the whole U-Net or DeepCache's shallow path
        feature = None
        with self.progress_bar(total=len(plan)) as progress:
            for step, t in zip(plan, self.scheduler.timesteps):
                rows = step.rows(mode)
                states, added = conditions[rows]
                model_input = self.scheduler.scale_model_input(torch.cat([latents] * rows), t)
                if full_pass is None:
                    noise = unet(model_input, t, encoder_hidden_states=states, added_cond_kwargs=added).sample
                elif step.full:
                    noise, feature = full_pass(model_input, t, states, added)
                else:
                    noise = shallow_pass(model_input, t, states, added, feature)
                eps = dual_ip_guidance(*noise.chunk(rows), w_text=w_text, w_pos=w_pos, w_neg=w_neg)
                latents = self.scheduler.step(eps, t, latents).prev_sample
                progress.update()

        # 6. Decode
        if output_type == "latent":
            return DualIPAdapterOutput(images=latents)
        latents = latents / self.vae.config.scaling_factor
        image = torch.cat([self.vae.decode(part).sample for part in latents.split(vae_batch_size or batch)])
        images = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * batch)
        self.maybe_free_model_hooks()
        return DualIPAdapterOutput(images=images)
