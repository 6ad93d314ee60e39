"""The DIPSY pipeline on the tiny kit: one gated U-Net call equals the branches evaluated the
official way (global adapter scales), and text mode equals diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.config import GenerationConfig, ModelsConfig
from synthshot.errors import ConfigError, ModelError
from synthshot.generation.engine import load_pipeline, make_scheduler
from synthshot.generation.pipeline import DualIPAdapterPipeline
from synthshot.models.diffusion import load_ip_adapters, load_sd_pipeline
from synthshot.models.tiny import BASIC_WEIGHTS, PLUS_WEIGHTS, kit_model_settings

SIZE = 32


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


def sd_with_adapters(kit, options, weights):
    models = ModelsConfig(**kit_model_settings(kit))
    sd = load_sd_pipeline(models.diffusion, options)
    load_ip_adapters(sd, models.ip_adapter, models.ip_adapter_subfolder, weights, options)
    return sd


@pytest.fixture(scope="module")
def reference(tiny_kit, hub_options):
    """diffusers' own pipeline with the two adapters (positive plus, negative basic format)."""
    return sd_with_adapters(tiny_kit, hub_options, [PLUS_WEIGHTS, BASIC_WEIGHTS])


@pytest.fixture(scope="module")
def dipsy(tiny_kit, hub_options):
    return DualIPAdapterPipeline.from_sd_pipeline(sd_with_adapters(tiny_kit, hub_options, [PLUS_WEIGHTS, BASIC_WEIGHTS]))


def official_branches(sd, latents, t, text, uncond, pos_features, neg_features, scale):
    """The four predictions the official way: one U-Net call per branch with global IP scales."""
    embeds = [pos_features, neg_features]

    def eps(states, scales):
        sd.set_ip_adapter_scale(scales)
        return sd.unet(latents, t, encoder_hidden_states=states, added_cond_kwargs={"image_embeds": embeds}).sample

    return [
        eps(uncond, [0.0, 0.0]),
        eps(text, [0.0, 0.0]),
        eps(text, [scale, 0.0]),
        eps(text, [scale, scale]),
    ]


def raw_features(sd, images, hidden):
    pixels = sd.feature_extractor(images, return_tensors="pt").pixel_values
    out = sd.image_encoder(pixels, output_hidden_states=hidden)
    return (out.hidden_states[-2] if hidden else out.image_embeds).unsqueeze(1)


@torch.no_grad()
def test_gated_single_call_matches_official_branches(reference, dipsy):
    batch = 2
    prompts = ["a photo of a circle", "a photo of a star"]
    positives, negatives = [picture(1), picture(2)], [picture(3), picture(4)]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, SIZE // 2, SIZE // 2, generator=g)
    t = torch.tensor(500)
    text = dipsy.encode_prompt(prompts)
    uncond = dipsy.encode_prompt([""] * batch)

    # synthshot: the four branches stacked into one U-Net call of batch 4 per image.
    dipsy.set_ip_adapter_scale(0.6)
    gates = dipsy.branch_gates("dual", batch, "cpu", torch.float32)
    tokens = [dipsy.encode_images(positives, 0).repeat(4, 1, 1, 1) * gates[0],
              dipsy.encode_images(negatives, 1).repeat(4, 1, 1, 1) * gates[1]]
    stacked = dipsy.unet(
        torch.cat([latents] * 4), t,
        encoder_hidden_states=torch.cat([uncond, text, text, text]),
        added_cond_kwargs={"image_embeds": tokens},
    ).sample.chunk(4)

    official = official_branches(
        reference, latents, t, text, uncond,
        raw_features(reference, positives, hidden=True), raw_features(reference, negatives, hidden=False), 0.6,
    )
    for name, got, want in zip(("e0", "eT", "eP", "eN"), stacked, official):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"branch {name} differs")
    # The branches really differ, so the comparison above is not vacuous.
    assert (official[2] - official[1]).abs().max() > 1e-3
    assert (official[3] - official[2]).abs().max() > 1e-3


def test_text_mode_equals_stable_diffusion_pipeline(tiny_kit, hub_options):
    from diffusers import StableDiffusionPipeline

    models = ModelsConfig(**kit_model_settings(tiny_kit))
    sd = StableDiffusionPipeline.from_pretrained(models.diffusion, safety_checker=None, requires_safety_checker=False)
    sd.scheduler = make_scheduler("dpm", sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    want = sd("a photo of a ring", guidance_scale=6.0, num_inference_steps=4, height=SIZE, width=SIZE,
              generator=torch.Generator().manual_seed(7), output_type="np").images

    config = GenerationConfig(mode="text", scheduler="dpm", precision="fp32")
    pipe = load_pipeline(models, config, hub_options, "cpu")
    got = pipe("a photo of a ring", w_text=6.0, num_inference_steps=4, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(7), output_type="np", mode="text").images
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_zero_image_scales_give_the_text_only_image(dipsy):
    common = dict(num_inference_steps=3, height=SIZE, width=SIZE, output_type="np", w_text=5.0)
    text = dipsy("a square", mode="text", generator=torch.Generator().manual_seed(3), **common).images
    dual = dipsy("a square", picture(1), picture(2), mode="dual", w_pos=0.0, w_neg=0.0,
                 generator=torch.Generator().manual_seed(3), **common).images
    np.testing.assert_allclose(dual, text, atol=1e-4)


def test_images_respond_to_their_conditions(dipsy):
    common = dict(num_inference_steps=3, height=SIZE, width=SIZE, output_type="np")

    def run(**kwargs):
        return dipsy("a square", generator=torch.Generator().manual_seed(5), **common, **kwargs).images

    dual_a = run(positive_image=picture(1), negative_image=picture(2), mode="dual")
    dual_b = run(positive_image=picture(1), negative_image=picture(9), mode="dual")
    single_a = run(positive_image=picture(1), negative_image=picture(2), mode="single")
    single_b = run(positive_image=picture(1), negative_image=picture(9), mode="single")
    assert np.abs(dual_a - dual_b).max() > 1e-3  # the negative image matters in dual mode
    np.testing.assert_array_equal(single_a, single_b)  # and is ignored in single mode
    no_ip = run(positive_image=picture(1), negative_image=picture(2), mode="dual", ip_adapter_scale=0.0)
    text = run(mode="text")
    np.testing.assert_allclose(no_ip, text, atol=1e-4)


def test_batch_gives_the_same_images_as_one_at_a_time(dipsy):
    common = dict(num_inference_steps=3, height=SIZE, width=SIZE, output_type="np", mode="dual")
    prompts, pos, neg = ["a star", "a ring"], [picture(1), picture(2)], [picture(3), picture(4)]
    together = dipsy(prompts, pos, neg, generator=[torch.Generator().manual_seed(s) for s in (10, 11)], **common).images
    for i, seed in enumerate((10, 11)):
        alone = dipsy(prompts[i], pos[i], neg[i], generator=torch.Generator().manual_seed(seed), **common).images
        np.testing.assert_allclose(together[i], alone[0], atol=1e-4)


def test_bad_inputs(dipsy):
    with pytest.raises(ConfigError, match="w_neg=-1"):
        dipsy("x", picture(1), picture(2), w_neg=-1.0, num_inference_steps=1, height=SIZE, width=SIZE)
    with pytest.raises(ConfigError, match="negative image"):
        dipsy("x", picture(1), None, mode="dual", num_inference_steps=1, height=SIZE, width=SIZE)
    with pytest.raises(ConfigError, match="multiple of 2"):
        dipsy("x", mode="text", num_inference_steps=1, height=33, width=SIZE)


def test_text_pipeline_refuses_image_modes(tiny_kit, hub_options):
    models = ModelsConfig(**kit_model_settings(tiny_kit))
    pipe = load_pipeline(models, GenerationConfig(mode="text", precision="fp32"), hub_options, "cpu")
    with pytest.raises(ConfigError, match="needs 1 IP-Adapter"):
        pipe("x", picture(1), mode="single", num_inference_steps=1, height=SIZE, width=SIZE)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_other_schedulers_run(tiny_kit, hub_options, scheduler):
    models = ModelsConfig(**kit_model_settings(tiny_kit))
    config = GenerationConfig(scheduler=scheduler, precision="fp32", attention="eager")
    pipe = load_pipeline(models, config, hub_options, "cpu")
    out = pipe("x", picture(1), picture(2), num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, SIZE, SIZE, 3) and np.isfinite(out).all()
    assert type(pipe.scheduler).__name__.lower().startswith(scheduler)


def test_adapter_that_does_not_fit_the_encoder_is_refused(tiny_kit, hub_options, tmp_path):
    import shutil

    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    repo = tmp_path / "ip"
    shutil.copytree(tiny_kit / "ip-adapter", repo)
    wide = CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            image_size=32, patch_size=4, projection_dim=24)
    CLIPVisionModelWithProjection(wide).save_pretrained(repo / "models" / "image_encoder")
    sd = load_sd_pipeline(str(tiny_kit / "stable-diffusion"), hub_options)
    with pytest.raises(ModelError, match=r"expects image features of width 32.*hidden_size is 48"):
        load_ip_adapters(sd, str(repo), "models", [PLUS_WEIGHTS], hub_options)
    with pytest.raises(ModelError, match=r"expects image features of width 32.*projection_dim is 24"):
        load_ip_adapters(sd, str(repo), "models", [BASIC_WEIGHTS], hub_options)


W_TEXT, W_POS, W_NEG, IP_SCALE = 4.0, 3.0, 1.5, 0.8


@torch.no_grad()
def test_one_denoising_step_of_the_call_equals_equation_9_over_the_official_branches(reference, dipsy, monkeypatch):
    """One step of `DualIPAdapterPipeline.__call__` (dual mode) against the four branches evaluated
    by diffusers' own pipeline with global adapter scales, as DIPSY's code does: e0 (empty prompt,
    both adapters at 0), eT (text, [0, 0]), eP (text, [s, 0]), eN (text, [s, s]), combined by the
    documented Eq. 9 written out here, with w_pos != w_neg so that a pos/neg swap shows."""
    prompt, positive, negative, seed = "a photo of a circle", picture(21), picture(22), 123
    seen = {}
    step = dipsy.scheduler.step

    def spy(model_output, timestep, sample, *args, **kwargs):
        seen.update(eps=model_output.clone(), t=timestep, latents=sample.clone())
        return step(model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(dipsy.scheduler, "step", spy)
    out = dipsy(prompt, positive, negative, mode="dual", w_text=W_TEXT, w_pos=W_POS, w_neg=W_NEG,
                ip_adapter_scale=IP_SCALE, num_inference_steps=1, height=SIZE, width=SIZE,
                generator=torch.Generator().manual_seed(seed), output_type="latent").images

    # The reference, from diffusers' StableDiffusionPipeline alone.
    scheduler = type(dipsy.scheduler).from_config(dipsy.scheduler.config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    assert int(seen["t"]) == int(t)
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))
    latents = latents * scheduler.init_noise_sigma
    torch.testing.assert_close(seen["latents"], latents, rtol=0, atol=0)
    text, uncond = reference.encode_prompt(prompt, "cpu", 1, True, negative_prompt=None)
    embeds = reference.prepare_ip_adapter_image_embeds([positive, negative], None, "cpu", 1, False)
    model_input = scheduler.scale_model_input(latents, t)

    def eps(states, scales):
        reference.set_ip_adapter_scale(scales)
        return reference.unet(model_input, t, encoder_hidden_states=states,
                              added_cond_kwargs={"image_embeds": embeds}).sample

    e0, eT = eps(uncond, [0.0, 0.0]), eps(text, [0.0, 0.0])
    eP, eN = eps(text, [IP_SCALE, 0.0]), eps(text, [IP_SCALE, IP_SCALE])
    want = e0 + W_TEXT * (eT - e0) + W_POS * (eP - eT) - W_NEG * (eN - eP)
    torch.testing.assert_close(seen["eps"], want, rtol=0, atol=1e-4)
    torch.testing.assert_close(out, scheduler.step(want, t, latents).prev_sample, rtol=0, atol=1e-4)

    # Not vacuous: the image branches move the prediction far beyond the tolerance, and so would
    # a positive/negative swap (images between the adapters, or eP/eN in the combination).
    assert (want - (e0 + W_TEXT * (eT - e0))).abs().max() > 1e-2
    reference.set_ip_adapter_scale([0.0, 0.0])
    swapped_inputs = reference.prepare_ip_adapter_image_embeds([negative, positive], None, "cpu", 1, False)
    embeds[:] = swapped_inputs
    sP, sN = eps(text, [IP_SCALE, 0.0]), eps(text, [IP_SCALE, IP_SCALE])
    assert (e0 + W_TEXT * (eT - e0) + W_POS * (sP - eT) - W_NEG * (sN - sP) - want).abs().max() > 1e-2
    assert (e0 + W_TEXT * (eT - e0) + W_POS * (eN - eT) - W_NEG * (eP - eN) - want).abs().max() > 1e-2
