"""Controls that a faithful DIPSY / LGCLIP run depends on, each checked on the real tiny kit so that a
broken wiring fails: which image feeds which adapter, the ablations (empty text, no augmentation,
first prompt only, uniform negatives), sdpa and eager attention, ensemble text templates and
cosine prototype scoring."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.config import ClassifierConfig, GenerationConfig, ModelsConfig, load_config
from synthshot.experiment import Experiment
from synthshot.generation.engine import PipelineRenderer, load_pipeline
from synthshot.generation.items import WorkItem, plan_items
from synthshot.generation.pipeline import DualIPAdapterPipeline
from synthshot.models.tiny import BASIC_WEIGHTS, PLUS_WEIGHTS, kit_model_settings

SIZE = 32
COLOURS = {"pos-a": (220, 30, 30), "neg-a": (30, 30, 220), "pos-b": (30, 200, 30), "neg-b": (230, 220, 20)}


def quiet(*_):
    pass


def generation(**settings) -> GenerationConfig:
    base = dict(mode="dual", steps=2, height=SIZE, width=SIZE, precision="fp32", scheduler="dpm", w_text=4.0,
                w_pos=3.0, w_neg=1.5, ip_adapter_scale=0.8)
    return GenerationConfig(**{**base, **settings})


def dual_models(kit) -> ModelsConfig:
    """Two different adapters (plus for the positive, basic for the negative) on the tiny kit."""
    return ModelsConfig(**{**kit_model_settings(kit), "ip_adapter_weights": [PLUS_WEIGHTS, BASIC_WEIGHTS]})


@pytest.fixture(scope="module")
def pipe(tiny_kit, hub_options):
    return load_pipeline(dual_models(tiny_kit), generation(), hub_options, "cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real image files of distinct solid colours, of a non-square size (so augmentation shows)."""
    folder = tmp_path_factory.mktemp("conditioning")
    paths = {}
    for name, colour in COLOURS.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (48, 40), colour).save(paths[name])
    return paths


def item(files, tag: str, index: int, prompt: str) -> WorkItem:
    return WorkItem(id=f"c-{index:05d}", class_name="c", class_slug="c", label=0, index=index, seed=1000 + index,
                    prompt=prompt, positive_file=str(files[f"pos-{tag}"]), negative_class="d",
                    negative_file=str(files[f"neg-{tag}"]))


def spy_encoding(monkeypatch):
    """Record what reaches each adapter's image encoding (the images, and the encoder's pixels),
    and every prompt list that is encoded; the real methods still run."""
    seen = {"images": {}, "pixels": {}, "prompts": []}
    encode_images, encode_prompt = DualIPAdapterPipeline.encode_images, DualIPAdapterPipeline.encode_prompt

    def images_spy(self, images, adapter):
        seen["images"][adapter] = [np.asarray(image).copy() for image in images]
        hook = self.image_encoder.register_forward_pre_hook(
            lambda module, args, kwargs: seen["pixels"].__setitem__(adapter, (args[0] if args else kwargs["pixel_values"]).clone()),
            with_kwargs=True,
        )
        try:
            return encode_images(self, images, adapter)
        finally:
            hook.remove()

    def prompt_spy(self, prompts):
        seen["prompts"].append(list(prompts))
        return encode_prompt(self, prompts)

    monkeypatch.setattr(DualIPAdapterPipeline, "encode_images", images_spy)
    monkeypatch.setattr(DualIPAdapterPipeline, "encode_prompt", prompt_spy)
    return seen


def mean_colour(array: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in array.reshape(-1, 3).mean(0))


# ------------------------------------------------------------------------ which image feeds which adapter
@pytest.mark.parametrize("augment", [True, False])
def test_renderer_feeds_the_positive_file_to_adapter_1_and_the_negative_file_to_adapter_2(pipe, files, monkeypatch, augment):
    seen = spy_encoding(monkeypatch)
    renderer = PipelineRenderer(pipe, generation(augment=augment, steps=1))
    out = renderer([item(files, "a", 0, "a photo of a c"), item(files, "b", 1, "a photo of a c")])
    assert all(isinstance(image, Image.Image) for image in out)
    assert set(seen["images"]) == {0, 1}
    assert [mean_colour(a) for a in seen["images"][0]] == [COLOURS["pos-a"], COLOURS["pos-b"]]
    assert [mean_colour(a) for a in seen["images"][1]] == [COLOURS["neg-a"], COLOURS["neg-b"]]


def test_renderer_in_single_mode_feeds_only_the_positive_file(pipe, files, monkeypatch):
    seen = spy_encoding(monkeypatch)
    PipelineRenderer(pipe, generation(mode="single", steps=1))([item(files, "a", 0, "x")])
    assert list(seen["images"]) == [0]
    assert [mean_colour(a) for a in seen["images"][0]] == [COLOURS["pos-a"]]


# ------------------------------------------------------------------------ ablations of the renderer
def test_augment_false_hands_the_encoder_the_file_as_read_apart_from_its_processor(pipe, files, monkeypatch):
    from synthshot.data.folders import load_rgb

    seen = spy_encoding(monkeypatch)
    PipelineRenderer(pipe, generation(augment=False, steps=1))([item(files, "a", 0, "x")])
    for adapter, name in ((0, "pos-a"), (1, "neg-a")):
        original = load_rgb(files[name])
        np.testing.assert_array_equal(seen["images"][adapter][0], np.asarray(original))
        want = pipe.feature_extractor([original], return_tensors="pt").pixel_values
        torch.testing.assert_close(seen["pixels"][adapter], want, rtol=0, atol=0)

    # With augmentation (the default) the same item's images are changed before the processor.
    seen = spy_encoding(monkeypatch)
    PipelineRenderer(pipe, generation(augment=True, steps=1))([item(files, "a", 0, "x")])
    assert seen["images"][0][0].shape != np.asarray(load_rgb(files["pos-a"])).shape


def test_empty_text_ablation_encodes_an_empty_prompt_for_every_image(pipe, files, monkeypatch):
    items = [item(files, "a", 0, "a photo of a star"), item(files, "b", 1, "a photo of a ring")]
    seen = spy_encoding(monkeypatch)
    PipelineRenderer(pipe, generation(steps=1))(items)
    assert ["a photo of a star", "a photo of a ring"] in seen["prompts"]

    seen = spy_encoding(monkeypatch)
    ablated = PipelineRenderer(pipe, generation(steps=1, empty_text=True))(items)
    assert seen["prompts"] and all(prompts == ["", ""] for prompts in seen["prompts"])
    # ... and the image is the pipeline's own for the empty prompt with the same conditioning.
    renderer = PipelineRenderer(pipe, generation(steps=1))
    direct = pipe(["", ""], *map(list, zip(*(renderer.conditioning(i) for i in items))), w_text=4.0, w_pos=3.0,
                  w_neg=1.5, ip_adapter_scale=0.8, num_inference_steps=1, height=SIZE, width=SIZE, mode="dual",
                  generator=[torch.Generator().manual_seed(s) for s in map(_noise_seed, items)]).images
    for got, want in zip(ablated, direct):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _noise_seed(work_item):
    from synthshot.generation.items import item_noise_seed

    return item_noise_seed(work_item)


# ------------------------------------------------------------------------ attention implementations
def test_sdpa_and_eager_attention_give_the_same_images(tiny_kit, hub_options, files):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    items = [item(files, "a", 0, "a photo of a star"), item(files, "b", 1, "a photo of a ring")]
    images, kinds = {}, {}
    for attention in ("sdpa", "eager"):
        config = generation(attention=attention, steps=3)
        pipe = load_pipeline(dual_models(tiny_kit), config, hub_options, "cpu")
        kinds[attention] = {type(p) for p in pipe.unet.attn_processors.values()}
        images[attention] = np.stack([np.asarray(i, dtype=np.float32) for i in PipelineRenderer(pipe, config)(items)])
    assert IPAdapterAttnProcessor2_0 in kinds["sdpa"] and IPAdapterAttnProcessor in kinds["eager"]
    assert not kinds["sdpa"] & kinds["eager"]
    # PNG-ready uint8 images: at most one level apart (rounding of values within float noise).
    assert np.abs(images["sdpa"] - images["eager"]).max() <= 1.0
    # Not vacuous: the adapters shape these images (text alone gives others).
    text = load_pipeline(dual_models(tiny_kit), generation(mode="text", steps=3), hub_options, "cpu")
    plain = np.stack([np.asarray(i, dtype=np.float32) for i in PipelineRenderer(text, generation(mode="text", steps=3))(items)])
    assert np.abs(images["sdpa"] - plain).max() > 8


# ------------------------------------------------------------------------ planning: prompts and negatives
def small_config(tmp_path, kit, *overrides):
    return load_config(None, [
        f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={kit}", "data.demo.classes=3",
        "data.demo.images_per_class=3", "data.demo.size=32", "data.shots=2", "generation.height=32",
        "generation.width=32", "generation.precision=fp32", *overrides,
    ])


@pytest.mark.parametrize("cycle", ["all", "first"])
def test_prompt_cycle_first_uses_each_class_s_first_prompt_for_every_image(tmp_path, tiny_kit, cycle):
    from synthshot.stages.generate import plan

    exp = Experiment(small_config(tmp_path, tiny_kit, "generation.mode=text", "generation.images_per_class=5"))
    prompts = {name: [f"{name} one", f"{name} two", f"{name} three"] for name in exp.data.split}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    config = small_config(tmp_path, tiny_kit, "generation.mode=text", "generation.images_per_class=5",
                          f"generation.prompts_file={path}", f"generation.prompt_cycle={cycle}")
    items = plan(Experiment(config), echo=quiet)
    assert len(items) == 15
    for name in prompts:
        got = [i.prompt for i in sorted(items, key=lambda i: i.index) if i.class_name == name]
        want = [prompts[name][0]] * 5 if cycle == "first" else [prompts[name][k % 3] for k in range(5)]
        assert got == want


def test_uniform_negatives_through_generate_need_no_similarity(tmp_path, tiny_kit, monkeypatch):
    from synthshot.stages import generate, similarity

    def no_similarity(*_, **__):
        raise AssertionError("similarity.sampling=uniform must not compute the class similarity")

    config = small_config(tmp_path, tiny_kit, "generation.images_per_class=300", "similarity.sampling=uniform")
    exp = Experiment(config)
    with monkeypatch.context() as patch:
        patch.setattr(similarity, "run", no_similarity)
        items = generate.plan(exp, echo=quiet)
    split = {name: [str(p) for p in files] for name, files in exp.data.split.items()}
    assert items == plan_items(split, images_per_class=300, base_seed=config.seed,
                               prompts=generate.prompts_per_class(exp), mode="dual", negative_probs=None)
    for name in split:  # each other class about half the time
        counts = Counter(i.negative_class for i in items if i.class_name == name)
        assert set(counts) == set(split) - {name}
        assert all(abs(count / 300 - 0.5) < 0.1 for count in counts.values())

    # The default, similarity sampling, does draw from the similarity (here made lopsided).
    from synthshot.generation.similarity import SimilarityResult

    classes = sorted(split)
    probs = torch.tensor([[0.0, 0.95, 0.05], [0.95, 0.0, 0.05], [0.95, 0.05, 0.0]])
    lopsided = SimilarityResult(classes=classes, similarity=torch.eye(3), negative_probs=probs)
    calls = []
    monkeypatch.setattr(similarity, "run", lambda exp, echo=print, **kwargs: calls.append(1) or lopsided)
    weighted = generate.plan(Experiment(small_config(tmp_path, tiny_kit, "generation.images_per_class=300")), echo=quiet)
    assert calls == [1]
    first = Counter(i.negative_class for i in weighted if i.class_name == classes[0])
    assert first[classes[1]] / 300 > 0.85


# ------------------------------------------------------------------------ text templates and scoring
class Captured(Exception):
    pass


def test_ensemble_templates_average_the_normalised_features_of_every_template(tmp_path, tiny_kit, monkeypatch):
    """The evaluate stage with classifier.text_templates=ensemble hands score_methods text weights
    equal to a direct computation with transformers' CLIPModel: per class, the mean of each
    template prompt's normalised feature, normalised again."""
    from transformers import CLIPModel, CLIPTokenizer

    from synthshot.classify import evaluate as classify_evaluate
    from synthshot.stages import evaluate as evaluate_stage

    captured = {}

    def capture(methods, settings, splits, classes, **kwargs):
        captured.update(kwargs, classes=classes)
        raise Captured

    def text_weights(which):
        exp = Experiment(small_config(tmp_path / which, tiny_kit, "classifier.methods=[text]",
                                      f"classifier.text_templates={which}", "features.batch_size=8"))
        with monkeypatch.context() as patch:
            patch.setattr(classify_evaluate, "score_methods", capture)
            with pytest.raises(Captured):
                evaluate_stage.run(exp, echo=quiet)
        return exp, captured["text_weights"].float().cpu()

    exp, ensemble = text_weights("ensemble")
    templates = list(classify_evaluate.GENERIC_TEMPLATES)  # the demo data has no registry dataset
    assert len(templates) > 1
    model = CLIPModel.from_pretrained(tiny_kit / "clip").eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_kit / "clip")
    rows = []
    with torch.no_grad():
        for key in captured["classes"]:
            features = []
            for template in templates:
                tokens = tokenizer([template.format(exp.data.class_names[key])], return_tensors="pt")
                feature = model.get_text_features(**tokens).pooler_output[0]
                features.append(feature / feature.norm())
            mean = torch.stack(features).mean(0)
            rows.append(mean / mean.norm())
    want = torch.stack(rows)
    torch.testing.assert_close(ensemble, want, rtol=0, atol=1e-5)
    # Not vacuous: the prompts' raw features differ in length, and one template gives other weights.
    _, single = text_weights("single")
    assert (single - want).abs().max() > 1e-3
    with torch.no_grad():
        raw = torch.stack([model.get_text_features(**tokenizer([t.format("circle")], return_tensors="pt")).pooler_output[0]
                           for t in templates])
    assert raw.norm(dim=-1).std() > 1e-3


def test_cosine_scoring_normalises_the_prototypes_in_score_methods():
    from synthshot.classify.evaluate import Split, score_methods

    g = torch.Generator().manual_seed(3)
    features = torch.nn.functional.normalize(torch.randn(40, 6, generator=g), dim=-1)
    prototypes = torch.randn(4, 6, generator=g) * torch.tensor([[3.0], [0.2], [1.0], [0.5]])  # norms differ
    cosine = (features @ torch.nn.functional.normalize(prototypes, dim=-1).T).argmax(-1)
    dot = (features @ prototypes.T).argmax(-1)
    assert (cosine != dot).sum() >= 5  # the two scorings disagree on these features
    labels = cosine.tolist()
    classes = ["a", "b", "c", "d"]

    def entry(score):
        settings = ClassifierConfig(score=score, methods=["prototypes"])
        (result,) = score_methods(["prototypes"], settings, [Split("test", features, labels)], classes,
                                  prototypes=prototypes)
        return result

    got = entry("cosine")
    assert got["params"] == {"score": "cosine"}
    assert got["metrics"]["top1"] == 1.0
    confusion = np.zeros((4, 4), dtype=int)
    for truth, guess in zip(labels, dot.tolist()):
        confusion[truth, guess] += 1
    assert entry("dot")["metrics"]["confusion"] == confusion.tolist()
    assert entry("dot")["metrics"]["top1"] == pytest.approx(float((dot == cosine).float().mean()))
