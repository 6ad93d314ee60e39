"""Speed options of generation on the tiny kit (real architectures, random weights): the image
guidance interval, DeepCache, Align Your Steps timesteps, compile without recompiles between
batches, channels-last and VAE batches; their config checks and what they do to the fingerprint
an image is recorded with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.config import GenerationConfig, ModelsConfig, load_config
from synthshot.errors import ConfigError
from synthshot.generation.engine import load_pipeline
from synthshot.generation.fingerprint import image_settings
from synthshot.generation.guidance import dual_ip_guidance
from synthshot.models.tiny import kit_model_settings

SIZE = 32
W = dict(w_text=4.0, w_pos=3.0, w_neg=1.5)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models(tiny_kit):
    return ModelsConfig(**kit_model_settings(tiny_kit))


@pytest.fixture(scope="module")
def pipe(models, hub_options):
    return load_pipeline(models, GenerationConfig(precision="fp32"), hub_options, "cpu")


def generate(pipe, prompts=("a star", "a ring"), seeds=(10, 11), steps=6, mode="dual", **options):
    batch = len(prompts)
    kwargs = {} if mode == "text" else {"positive_image": [picture(s) for s in seeds]}
    if mode == "dual":
        kwargs["negative_image"] = [picture(s + 50) for s in seeds]
    return pipe(list(prompts), mode=mode, num_inference_steps=steps, height=SIZE, width=SIZE, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in seeds[:batch]], **W, **kwargs, **options).images


@torch.no_grad()
def todays_images(pipe, prompts, seeds, steps):
    """The dual-mode loop as it was before the speed options: four branches in one U-Net call at
    every step, the scheduler's own timesteps, one VAE call."""
    batch = len(prompts)
    uncond, text = pipe.encode_prompt([""] * batch), pipe.encode_prompt(list(prompts))
    states = torch.cat([uncond, text, text, text])
    pipe.set_ip_adapter_scale(0.6)
    gates = pipe.branch_gates("dual", batch, "cpu", torch.float32)
    tokens = [pipe.encode_images([picture(s) for s in seeds], 0).repeat(4, 1, 1, 1) * gates[0],
              pipe.encode_images([picture(s + 50) for s in seeds], 1).repeat(4, 1, 1, 1) * gates[1]]
    pipe.scheduler.set_timesteps(steps)
    latents = pipe.prepare_latents(batch, SIZE, SIZE, [torch.Generator().manual_seed(s) for s in seeds])
    for t in pipe.scheduler.timesteps:
        noise = pipe.unet(pipe.scheduler.scale_model_input(torch.cat([latents] * 4), t), t,
                          encoder_hidden_states=states, added_cond_kwargs={"image_embeds": tokens}).sample
        latents = pipe.scheduler.step(dual_ip_guidance(*noise.chunk(4), **W), t, latents).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * batch)


class Evaluations:
    """Counts U-Net rows: `conv_in` runs in every pass (whole or shallow), the mid block only in
    whole ones."""

    def __init__(self, unet):
        self.total, self.full = 0, 0
        self.handles = [
            unet.conv_in.register_forward_pre_hook(lambda m, args: self.add("total", args[0])),
            unet.mid_block.register_forward_pre_hook(lambda m, args: self.add("full", args[0])),
        ]

    def add(self, name, x):
        setattr(self, name, getattr(self, name) + x.shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# ------------------------------------------------------------------------------- defaults
def test_defaults_are_todays_behaviour():
    gen = GenerationConfig()
    assert gen.image_guidance_interval == (0.0, 1.0) and gen.cache_interval is None
    assert gen.timestep_schedule == "default" and not gen.compile and not gen.channels_last
    assert gen.vae_batch_size is None


def test_whole_interval_and_no_cache_give_todays_images_exactly(pipe):
    prompts, seeds = ("a star", "a ring"), (10, 11)
    want = todays_images(pipe, prompts, seeds, 6)
    np.testing.assert_array_equal(generate(pipe, prompts, seeds), want)
    for options in ({"image_guidance_interval": (0.0, 1.0)}, {"cache_interval": 1}, {"cache_interval": None},
                    {"image_guidance_interval": [0, 1], "cache_interval": 1, "vae_batch_size": 2}):
        np.testing.assert_array_equal(generate(pipe, prompts, seeds, **options), want, err_msg=str(options))


# ---------------------------------------------------------------------- evaluation counts
@pytest.mark.parametrize(
    "mode, steps, interval, k, full, shallow",
    [
        ("dual", 10, (0.0, 1.0), 1, 40, 0),  # today: 4 branches x 10 steps
        ("dual", 10, (0.5, 1.0), 1, 30, 0),  # half the trajectory: 4 x 5 + 2 x 5
        ("dual", 10, (0.2, 0.7), 1, 30, 0),  # steps 2..6 inside
        ("dual", 10, (0.0, 1.0), 3, 16, 24),  # whole U-Net at steps 0, 3, 6, 9
        ("dual", 10, (0.5, 1.0), 3, 12, 18),  # full at 0, 3 (rows 2), 5 (enters the interval), 8 (rows 4)
        ("dual", 10, (0.0, 0.5), 3, 12, 18),  # full at 0, 3 (rows 4), 6, 9 (rows 2); 5 reuses the text rows
        ("single", 8, (0.25, 0.75), 1, 20, 0),  # 3 x 4 + 2 x 4
        ("text", 6, (0.0, 1.0), 2, 6, 6),  # full at 0, 2, 4
    ],
)
def test_evaluations_per_image_match_the_formula(pipe, mode, steps, interval, k, full, shallow):
    from synthshot.generation.guidance import evaluations_per_image, step_plan

    assert evaluations_per_image(step_plan(steps, mode, interval, k), mode) == {"full": full, "shallow": shallow}
    with Evaluations(pipe.unet) as seen:
        generate(pipe, steps=steps, mode=mode, image_guidance_interval=interval, cache_interval=k)
    batch = 2
    assert (seen.full / batch, (seen.total - seen.full) / batch) == (full, shallow)


# -------------------------------------------------------------------------- the interval
def test_outside_the_interval_the_prediction_is_text_guidance(pipe, monkeypatch):
    """An empty interval gives the text-mode image; with [0.5, 1] the first half of the steps is
    exactly text mode's and the second half is not."""
    text = generate(pipe, mode="text")
    np.testing.assert_array_equal(generate(pipe, image_guidance_interval=(0.3, 0.3)), text)

    step = pipe.scheduler.step
    seen: list[torch.Tensor] = []

    def spy(model_output, timestep, sample, *args, **kwargs):
        seen.append(model_output.clone())
        return step(model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", spy)
    generate(pipe, mode="text", steps=6)
    text_eps, seen[:] = list(seen), []
    generate(pipe, steps=6, image_guidance_interval=(0.5, 1.0))
    for i in range(3):
        torch.testing.assert_close(seen[i], text_eps[i], rtol=0, atol=0)
    assert (seen[3] - text_eps[3]).abs().max() > 1e-3  # the image branches act from step 3 on


def test_interval_and_cache_errors(pipe):
    with pytest.raises(ConfigError, match=r"image_guidance_interval \[0.7, 0.2\] is reversed"):
        generate(pipe, image_guidance_interval=(0.7, 0.2))
    with pytest.raises(ConfigError, match=r"image_guidance_interval \[-0.1, 0.5\] must lie within \[0, 1\]"):
        generate(pipe, image_guidance_interval=(-0.1, 0.5))
    with pytest.raises(ConfigError, match="cache_interval must be an integer >= 1"):
        generate(pipe, cache_interval=0)


# ---------------------------------------------------------------------------- DeepCache
@torch.no_grad()
def test_deepcache_passes_are_the_unet_exactly(pipe):
    from synthshot.generation.deepcache import DeepCacheUNet

    g = torch.Generator().manual_seed(3)
    x, later = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    states = torch.randn(4, 77, 32, generator=g)
    added = {"image_embeds": [torch.randn(4, 1, 4, 32, generator=g), torch.randn(4, 1, 4, 32, generator=g)]}
    t = torch.tensor(500)
    want = pipe.unet(x, t, encoder_hidden_states=states, added_cond_kwargs=added).sample
    cache = DeepCacheUNet(pipe.unet)
    full, feature = cache.full(x, t, states, added)
    torch.testing.assert_close(full, want, rtol=0, atol=0)
    # The shallow path with the deep feature of the same input is the whole U-Net again ...
    torch.testing.assert_close(cache.shallow(x, t, states, added, feature), want, rtol=0, atol=0)
    # ... with that of another input it is DeepCache's approximation, and the text rows can be reused.
    assert (cache.shallow(later, t, states, added, feature) - want).abs().max() > 1e-3
    text_rows = cache.shallow(x[:2], t, states[:2], {"image_embeds": [e[:2] for e in added["image_embeds"]]}, feature)
    torch.testing.assert_close(text_rows, want[:2], rtol=0, atol=1e-6)


def test_caching_changes_images_only_within_a_tolerance_and_is_deterministic(pipe):
    base = generate(pipe, steps=10)
    cached = generate(pipe, steps=10, cache_interval=3)
    difference = np.abs(cached - base)
    assert 0 < difference.max() < 0.1 and difference.mean() < 0.02  # pixel values in [0, 1]
    np.testing.assert_array_equal(generate(pipe, steps=10, cache_interval=3), cached)
    alone = generate(pipe, prompts=("a ring",), seeds=(11,), steps=10, cache_interval=3)
    np.testing.assert_allclose(alone[0], cached[1], atol=1e-4)  # the batch does not change an image


# ------------------------------------------------------------------------ Align Your Steps
def test_ays_timesteps(pipe, monkeypatch):
    from diffusers.schedulers import AysSchedules

    from synthshot.generation.schedules import ays_timesteps

    published = list(AysSchedules["StableDiffusionTimesteps"])
    assert ays_timesteps(pipe.scheduler, 10) == published
    twenty = ays_timesteps(pipe.scheduler, 20)
    assert len(twenty) == 20 and twenty[0] == 999 and twenty[-1] == 24
    assert all(a > b for a, b in zip(twenty, twenty[1:]))
    # Interpolation in log sigma: at 19 steps every other position is one of the published 10.
    assert ays_timesteps(pipe.scheduler, 19)[::2] == published

    visited = []
    step = pipe.scheduler.step
    monkeypatch.setattr(pipe.scheduler, "step", lambda e, t, x, *a, **k: (visited.append(int(t)), step(e, t, x, *a, **k))[1])
    generate(pipe, steps=10, timestep_schedule="ays")
    assert visited == published


def test_ays_needs_a_scheduler_that_takes_timesteps(models, hub_options):
    with pytest.raises(ConfigError, match="timestep_schedule ays needs a scheduler that takes given timesteps"):
        load_config(None, ["generation.timestep_schedule=ays", "generation.scheduler=ddim"])
    ddim = load_pipeline(models, GenerationConfig(precision="fp32", scheduler="ddim"), hub_options, "cpu")
    with pytest.raises(ConfigError, match="DDIMScheduler does not"):
        generate(ddim, steps=2, timestep_schedule="ays")


# ------------------------------------------------------------------------------ compile
def test_compile_runs_each_batch_shape_once(pipe, models, hub_options):
    """Static shapes: the first batch compiles (the whole U-Net and DeepCache's passes, for 4 and
    for 2 rows per image), a second batch of the same size with other prompts, images and seeds
    compiles nothing, and the images are those of the uncompiled pipeline."""
    compiled_graphs = []

    def backend(graph, example_inputs):
        compiled_graphs.append(graph)
        return graph.forward

    fresh = load_pipeline(models, GenerationConfig(precision="fp32"), hub_options, "cpu")
    fresh.compile(backend=backend)
    options = dict(steps=4, image_guidance_interval=(0.0, 0.5), cache_interval=2)
    first = generate(fresh, **options)
    after_first = len(compiled_graphs)
    assert after_first > 0
    second = generate(fresh, prompts=("a square", "a cross"), seeds=(20, 21), **options)
    assert len(compiled_graphs) == after_first, "a batch of a size seen before recompiled"
    np.testing.assert_allclose(first, generate(pipe, **options), atol=1e-5)
    np.testing.assert_allclose(second, generate(pipe, prompts=("a square", "a cross"), seeds=(20, 21), **options),
                               atol=1e-5)


def test_compile_where_the_backend_lacks_it_is_a_config_error(models, hub_options, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # no C++ compiler for inductor on the CPU
    with pytest.raises(ConfigError, match=r"^generation.compile is true but inductor needs a C\+\+ compiler") as info:
        load_pipeline(models, GenerationConfig(precision="fp32", compile=True), hub_options, "cpu")
    assert "\n" not in str(info.value)


# -------------------------------------------------------------- layout and VAE batches
def test_channels_last_and_vae_batches_give_the_same_images(pipe, models, hub_options):
    want = generate(pipe)
    np.testing.assert_allclose(generate(pipe, vae_batch_size=1), want, atol=1e-6)
    layout = load_pipeline(models, GenerationConfig(precision="fp32", channels_last=True), hub_options, "cpu")
    assert layout.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(generate(layout), want, atol=1e-5)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, message",
    [
        ("generation.image_guidance_interval=[0.6, 0.2]", r"generation.image_guidance_interval: .*is reversed"),
        ("generation.image_guidance_interval=[0, 1.5]", r"generation.image_guidance_interval: .*within \[0, 1\]"),
        ("generation.image_guidance_interval=[0.5]", r"generation.image_guidance_interval"),
        ("generation.cache_interval=0", r"generation.cache_interval: input should be greater than or equal to 1"),
        ("generation.timestep_schedule=karras", r"generation.timestep_schedule"),
    ],
)
def test_bad_speed_settings_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value) and "unknown key" not in str(info.value)


def test_fingerprint_records_only_the_options_that_change_images():
    base = image_settings(load_config(None))
    assert not {"image_guidance_interval", "cache_interval", "timestep_schedule"} & set(base)  # old sets stay valid
    for override in ("generation.compile=true", "generation.channels_last=true", "generation.vae_batch_size=1",
                     "generation.image_guidance_interval=[0, 1]", "generation.cache_interval=1"):
        assert image_settings(load_config(None, [override])) == base, override
    changed = image_settings(load_config(None, ["generation.image_guidance_interval=[0.25, 0.75]",
                                                "generation.cache_interval=3", "generation.timestep_schedule=ays"]))
    assert changed["image_guidance_interval"] == [0.25, 0.75] and changed["cache_interval"] == 3
    assert changed["timestep_schedule"] == "ays"
    # Text mode has no image branches: the interval does not change its images.
    text = load_config(None, ["generation.mode=text", "generation.image_guidance_interval=[0.25, 0.75]"])
    assert "image_guidance_interval" not in image_settings(text)


def test_dipsy_fast_preset_is_dipsy_with_fewer_steps():
    fast, dipsy = load_config("dipsy-fast").model_dump(mode="json"), load_config("dipsy").model_dump(mode="json")
    gen = fast["generation"]
    assert (gen["scheduler"], gen["steps"], gen["timestep_schedule"]) == ("dpm", 20, "ays")
    for config in (fast, dipsy):
        config.pop("output_dir")
        config.pop("preset")
        for key in ("steps", "timestep_schedule"):
            config["generation"].pop(key)
    assert fast == dipsy
