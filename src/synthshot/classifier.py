"""Use what a run trained: a classifier loaded from a run folder or from an export, with exactly
the preprocessing its evaluation used, that predicts classes of new images.

    clf = load_classifier("runs/quickstart")            # the method best on validation
    clf = load_classifier("runs/quickstart", method="finetune")
    top = clf.predict(["cat.jpg", pil_image], top_k=3)  # [[("cat", 0.91), ("dog", 0.05), ...], ...]

Methods and their logits (probabilities are their softmax):

- `finetune`: CLIP with the run's LoRA merged; CLIP's logit scale × cosine(image, class text).
- `text`: zero-shot CLIP, 100 × cosine(image, class text) over the run's templates.
- `prototypes`: 100 × (image feature · class prototype), the run's single- or multi-scale features.
- `combined`: the prototype and text logits mixed with the weight the run chose on validation.
- `tip_adapter`: Tip-Adapter over the synthetic features with the run's α and β.

An export (`export_classifier`) is a folder that needs only transformers and safetensors: the
CLIP model (LoRA merged) in `save_pretrained` form, its processor, the classifier head in
`classifier.safetensors`, the classes, the settings and a model card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthshot.errors import ConfigError, DataError, ModelError

METHODS = ("finetune", "prototypes", "text", "combined", "tip_adapter")
EXPORT_FILE = "synthshot_export.json"
HEAD_FILE = "classifier.safetensors"
CLASSES_FILE = "classes.json"
EXPORT_FORMAT = "synthshot-export-1"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_STAGE_OF = {"finetune": "finetune", "prototypes": "prototypes", "text": "evaluate", "combined": "evaluate",
             "tip_adapter": "evaluate"}


@dataclass
class Classifier:
    """A trained classifier: `classes` in label order, `method`, and how to score images."""

    method: str
    classes: list[str]
    names: dict[str, str]  # class key -> its readable name (the one in prompts)
    params: dict[str, Any]
    preprocessing: dict[str, Any]  # {"multiscale": bool, "scales": [...], "seed": int}
    source: str
    encode: Callable[[list], Any] = field(repr=False)  # PIL images -> [N, D] normalised features
    head: dict[str, Any] = field(repr=False)  # the tensors the logits need
    bundle: Any = field(default=None, repr=False)  # the CLIP bundle (model, tokenizer, processor)
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # the run's accuracy and data

    # ------------------------------------------------------------------ scoring
    def logits(self, images: Sequence) -> Any:
        """[N, C] logits of PIL images (or paths)."""
        import torch

        from synthshot.classify.prototypes import prototype_logits
        from synthshot.classify.tip_adapter import tip_adapter_logits
        from synthshot.classify.zeroshot import combined_logits, text_logits

        features = self.encode([_as_image(image) for image in images])
        head, params = self.head, self.params
        with torch.no_grad():
            if self.method == "finetune":
                return head["logit_scale"].float() * features @ head["text_features"].float().T
            if self.method == "text":
                return text_logits(features, head["text_features"])
            if self.method == "tip_adapter":
                return tip_adapter_logits(features, head["keys"], head["key_labels"].long(), head["text_features"],
                                          float(params["alpha"]), float(params["beta"]))
            scores = prototype_logits(features, head["prototypes"], params.get("score", "dot"))
            if self.method == "prototypes":
                return 100.0 * scores
            return combined_logits(scores, text_logits(features, head["text_features"]), float(params["weight"]))

    def predict_proba(self, images: Sequence) -> Any:
        """[N, C] class probabilities (the softmax of the logits)."""
        return self.logits(images).softmax(dim=-1)

    def predict(self, images: Sequence, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, its `top_k` (class, probability) pairs, most likely first."""
        if not images:
            return []
        probs = self.predict_proba(images)
        k = max(1, min(top_k, len(self.classes)))
        values, indices = probs.topk(k, dim=-1)
        return [[(self.classes[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
                for row_p, row_i in zip(values, indices)]


def _as_image(image):
    from PIL import Image

    from synthshot.data.folders import load_rgb

    if isinstance(image, (str, os.PathLike)):
        return load_rgb(Path(image))
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(f"an image must be a path or a PIL image, not {type(image).__name__}")


# ---------------------------------------------------------------------- loading
def load_classifier(path: str | os.PathLike, method: str | None = None, *, device: str = "auto",
                    offline: bool | None = None) -> Classifier:
    """The classifier of a run folder (the method best on validation unless `method`) or of an
    export folder (`export_classifier`)."""
    path = Path(path)
    if method is not None and method not in METHODS:
        raise ConfigError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if (path / EXPORT_FILE).is_file():
        return _load_export(path, method, device)
    if not (path / "config.resolved.yaml").is_file():
        raise DataError(f"{str(path)!r} is neither a run folder (no config.resolved.yaml) nor an export "
                        f"(no {EXPORT_FILE}): give the output folder of `synthshot run` or of `synthshot export`")
    return _load_run(path, method, device, offline)


def run_methods(run: Path) -> dict[str, dict]:
    """method -> {"test": entry, "val": entry} from the run's results files."""
    from synthshot.results import read_results

    found: dict[str, dict] = {}
    for stage in ("evaluate", "finetune"):
        file = run / stage / "results.json"
        if file.is_file():
            for entry in read_results(file)["results"]:
                found.setdefault(entry["method"], {})[entry["split"]] = entry
    return found


def choose_method(run: Path) -> str:
    """The method with the best validation top-1 (never test); without validation results the
    fine-tuned classifier when there is one, else the prototypes, else text zero-shot."""
    found = run_methods(run)
    on_val = {m: e["val"]["metrics"]["top1"] for m, e in found.items() if "val" in e}
    if on_val:
        return max(on_val, key=lambda m: (on_val[m], -METHODS.index(m) if m in METHODS else 0))
    for method in ("finetune", "prototypes", "text"):
        if method in found:
            return method
    raise DataError(f"{str(run)!r} has no results of the finetune or evaluate stages yet: run them first "
                    "(or pass --method text for zero-shot CLIP)")


def _load_run(run: Path, method: str | None, device: str, offline: bool | None) -> Classifier:
    import torch

    from synthshot.config import load_config
    from synthshot.experiment import Experiment
    from synthshot.models.hub import resolve_device

    config = load_config(run / "config.resolved.yaml")
    config = config.model_copy(update={"output_dir": run})  # the folder given, even if the run was moved
    if offline is not None:
        config = config.model_copy(update={"offline": offline})
    config = config.model_copy(update={"device": device if device != "auto" else config.device})
    exp = Experiment(config)
    method = method or choose_method(run)
    found = run_methods(run)
    params = dict(found.get(method, {}).get("test", {}).get("params", {}))
    names = exp.data.class_names
    classes = list(exp.classes)
    info = {"run": str(run), "accuracy": {split: e["metrics"]["top1"] for split, e in found.get(method, {}).items()},
            "dataset": exp.dataset_name, "shots": config.data.shots,
            "images_per_class": config.generation.images_per_class, "model": config.models.clip,
            "config": config.model_dump(mode="json")}
    if method == "finetune":
        from synthshot.classify.finetune import ADAPTER_DIR, FINETUNE_DIR
        from synthshot.classify.lora import apply_adapter, read_adapter_info
        from synthshot.classify.text import text_classifier_weights
        from synthshot.models.clip import load_clip

        adapter = run / FINETUNE_DIR / ADAPTER_DIR
        if not adapter.is_dir():
            raise DataError(f"{str(run)!r} has no fine-tuned adapter ({FINETUNE_DIR}/{ADAPTER_DIR}): run the finetune "
                            "stage (`synthshot finetune CONFIG`), or choose another --method")
        dev = resolve_device(config.device)
        bundle = apply_adapter(load_clip(config.models.clip, exp.hub, device=dev), adapter)
        adapter_info = read_adapter_info(adapter)
        classes = list(adapter_info["classes"])
        text = text_classifier_weights(bundle, adapter_info["prompts"], dev).float().cpu()
        head = {"text_features": text, "logit_scale": bundle.model.logit_scale.detach().exp().float().cpu()}
        return Classifier(method=method, classes=classes, names={k: names.get(k, k) for k in classes}, params=params,
                          preprocessing={"multiscale": False}, source=str(run), encode=_clip_encoder(bundle, dev),
                          head=head, bundle=bundle, info=info)

    from synthshot.classify.evaluate import class_text_prompts, load_prototypes
    from synthshot.stages.features import image_features, load_encoder

    encoder = load_encoder(exp)
    feats = config.features
    preprocessing = {"multiscale": feats.multiscale, "scales": list(feats.scales), "seed": feats.seed}
    head: dict[str, Any] = {}
    if method in ("text", "combined", "tip_adapter"):
        if not encoder.has_text_tower:
            raise ModelError(f"{config.models.clip} has no text tower here: --method {method} cannot run")
        prompts = class_text_prompts(config.data.dataset, config.classifier.text_templates, names)
        head["text_features"] = encoder.text_classifier({key: prompts[key] for key in classes}).float().cpu()
    if method in ("prototypes", "combined"):
        prototypes_dir = exp.layout.prototypes
        if not (prototypes_dir / "prototypes.safetensors").is_file():
            raise DataError(f"{str(run)!r} has no prototypes: run the prototypes stage (`synthshot prototypes CONFIG`), "
                            "or choose another --method")
        head["prototypes"], saved = load_prototypes(prototypes_dir)
        if saved != classes:
            raise DataError(f"{prototypes_dir} holds prototypes of other classes than the run's: run prototypes again")
        params.setdefault("score", config.classifier.score)
    if method == "tip_adapter":
        synthetic = exp.synthetic.images
        head["keys"] = image_features(exp, encoder, synthetic, "synthetic", echo=lambda *_: None).float().cpu()
        head["key_labels"] = torch.tensor(synthetic.labels)
    if method in ("combined", "tip_adapter") and not params:
        raise DataError(f"{str(run)!r} has no evaluate results for {method} (its chosen parameters): run the evaluate "
                        "stage first")
    if method == "text":
        params.setdefault("templates", config.classifier.text_templates)

    def encode(images):
        from synthshot.features.extract import encode_pil_images

        return encode_pil_images(encoder, images, multiscale=feats.multiscale, scales=feats.scales, seed=feats.seed)

    return Classifier(method=method, classes=classes, names={k: names.get(k, k) for k in classes}, params=params,
                      preprocessing=preprocessing, source=str(run), encode=encode, head=head,
                      bundle=getattr(encoder, "clip", None), info=info)


def _clip_encoder(bundle, device: str):
    """Normalised projected image features of a transformers CLIP bundle, with its own processor
    (the preprocessing fine-tuning evaluated with)."""
    import torch

    from synthshot.classify.text import image_embeddings

    def encode(images):
        pixels = bundle.processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
        with torch.no_grad():
            out = image_embeddings(bundle.model, pixels.to(bundle.model.dtype)).float()
        return torch.nn.functional.normalize(out, dim=-1).cpu()

    return encode


def _load_export(folder: Path, method: str | None, device: str) -> Classifier:
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from synthshot.io import parse_json
    from synthshot.models.clip import CLIPBundle
    from synthshot.models.hub import resolve_device

    meta = parse_json((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"{folder / EXPORT_FILE} has format {meta.get('format')!r}, not {EXPORT_FORMAT!r}")
    if method is not None and method != meta["method"]:
        raise ConfigError(f"{str(folder)!r} is an export of the {meta['method']} classifier: --method {method} is not in "
                          "it (export the run again with that method)")
    dev = resolve_device(device)
    model = CLIPModel.from_pretrained(folder, use_safetensors=True).eval().to(dev)
    bundle = CLIPBundle(name=str(folder), model=model, tokenizer=CLIPTokenizer.from_pretrained(folder),
                        processor=CLIPImageProcessor.from_pretrained(folder))
    head = {key: value for key, value in load_file(str(folder / HEAD_FILE)).items()}
    classes = parse_json((folder / CLASSES_FILE).read_text(encoding="utf-8"))
    preprocessing = meta["preprocessing"]
    if preprocessing.get("multiscale"):
        from synthshot.features.backends import TransformersImageEncoder
        from synthshot.features.extract import encode_pil_images

        encoder = TransformersImageEncoder(bundle)

        def encode(images):
            return encode_pil_images(encoder, images, multiscale=True, scales=preprocessing["scales"],
                                     seed=preprocessing["seed"])
    else:
        encode = _clip_encoder(bundle, dev)
    if "logit_scale" in head:
        head["logit_scale"] = head["logit_scale"].reshape(())
    return Classifier(method=meta["method"], classes=list(classes["classes"]), names=dict(classes["names"]),
                      params=dict(meta["params"]), preprocessing=preprocessing, source=str(folder), encode=encode,
                      head=head, bundle=bundle, info=dict(meta.get("info", {})))


# ---------------------------------------------------------------------- images
def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from paths of files, folders (searched recursively, sorted) or text files that
    list one path per line (relative to the list's folder). A path that does not exist is an error."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file() and path.suffix.lower() == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    listed = Path(line.strip())
                    files.append(listed if listed.is_absolute() else path.parent / listed)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{str(path)!r} does not exist: give image files, folders or a .txt list of paths")
    return files


# ---------------------------------------------------------------------- export
def export_classifier(source: str | os.PathLike, out: str | os.PathLike, method: str | None = None, *,
                      force: bool = False, device: str = "auto") -> Path:
    """Write a standalone classifier folder (see the module docstring); an existing folder is
    refused unless `force`, and then replaced only if it is a synthshot export."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DataError(f"the export folder {str(out)!r} exists: choose a new folder, or pass --force to replace it")
        if not (out / EXPORT_FILE).is_file():
            raise DataError(f"{str(out)!r} is not a synthshot export (no {EXPORT_FILE}): synthshot never replaces "
                            "other files; choose a new folder")
    clf = load_classifier(source, method, device=device)
    if clf.bundle is None:
        raise ModelError(f"the {clf.method} classifier of {str(source)!r} uses an open_clip model: only transformers "
                         "CLIP models can be exported")
    from safetensors.torch import save_file

    from synthshot.io import TEMP_PREFIX, atomic_write_json, atomic_write_text, swap_in_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}-", dir=out.parent))
    try:
        clf.bundle.model.save_pretrained(staging, safe_serialization=True)
        clf.bundle.tokenizer.save_pretrained(staging)
        clf.bundle.processor.save_pretrained(staging)
        head = {key: (value.reshape(1) if value.ndim == 0 else value).contiguous().float()
                for key, value in clf.head.items() if key != "key_labels"}
        if "key_labels" in clf.head:
            head["key_labels"] = clf.head["key_labels"].long().contiguous()
        save_file(head, str(staging / HEAD_FILE))
        atomic_write_json(staging / CLASSES_FILE, {"classes": clf.classes, "names": clf.names})
        atomic_write_json(staging / EXPORT_FILE, {
            "format": EXPORT_FORMAT, "method": clf.method, "params": clf.params, "preprocessing": clf.preprocessing,
            "logits": LOGITS[clf.method], "info": {k: v for k, v in clf.info.items() if k != "config"},
        })
        atomic_write_text(staging / "README.md", model_card(clf))
        swap_in_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


LOGITS = {
    "finetune": "logit_scale * normalize(image_features) @ text_features.T",
    "text": "100 * normalize(image_features) @ text_features.T",
    "prototypes": "100 * normalize(image_features) @ prototypes.T (prototypes normalised first when params.score is cosine)",
    "combined": "weight * 100 * (normalize(image_features) @ prototypes.T) + (1 - weight) * 100 * "
                "(normalize(image_features) @ text_features.T)",
    "tip_adapter": "100 * f @ text_features.T + alpha * sum_j exp(-beta * (1 - f @ keys[j])) * onehot(key_labels[j])",
}


def model_card(clf: Classifier) -> str:
    """The README.md of an export: what it is, how it was made, how well it did, how to use it."""
    info, config = clf.info, clf.info.get("config", {})
    accuracy = info.get("accuracy", {})
    lines = [
        f"# synthshot classifier: {info.get('dataset', '?')} ({clf.method})",
        "",
        f"A CLIP classifier of {len(clf.classes)} classes made by synthshot from {info.get('shots', '?')} labelled "
        f"image(s) per class and {info.get('images_per_class', '?')} synthetic image(s) per class.",
        "",
        "| | |", "| --- | --- |",
        f"| base model | `{info.get('model', '?')}` |",
        f"| method | `{clf.method}` |",
        f"| classes | {len(clf.classes)} |",
        f"| dataset | {info.get('dataset', '?')} |",
        f"| shots (real images per class) | {info.get('shots', '?')} |",
        f"| synthetic images per class | {info.get('images_per_class', '?')} |",
        *(f"| top-1 on {split} | {100 * value:.2f}% |" for split, value in sorted(accuracy.items())),
        f"| parameters | `{json.dumps(clf.params, sort_keys=True)}` |",
        f"| preprocessing | `{json.dumps(clf.preprocessing, sort_keys=True)}` |",
        "",
        "The accuracy is that of the run's own evaluation (its test set; parameters and checkpoints chosen on "
        "validation, never on test).",
        "",
        "## Use it without synthshot",
        "",
        "```python",
        "import json, torch",
        "from PIL import Image",
        "from safetensors.torch import load_file",
        "from transformers import CLIPImageProcessor, CLIPModel",
        "",
        "model = CLIPModel.from_pretrained('.').eval()",
        "processor = CLIPImageProcessor.from_pretrained('.')",
        f"head = load_file('{HEAD_FILE}')",
        f"classes = json.load(open('{CLASSES_FILE}'))['classes']",
        "pixels = processor(images=[Image.open('image.jpg').convert('RGB')], return_tensors='pt')['pixel_values']",
        "with torch.no_grad():",
        "    f = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)",
        f"logits = {LOGITS[clf.method]}",
        "print(classes[logits.argmax(-1).item()])",
        "```",
        "",
        ("Multi-scale features (LGCLIP): the image feature is the weighted mean of crops at the scales in "
         "`synthshot_export.json`; `synthshot predict` computes it exactly." if clf.preprocessing.get("multiscale")
         else "Single-scale features: the processor above is the whole preprocessing."),
        "",
        "## Classes",
        "",
        ", ".join(f"`{clf.names.get(key, key)}`" for key in clf.classes),
        "",
        "## Config of the run",
        "",
        "```json",
        json.dumps(config, indent=1, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- predict
def predict_files(clf: Classifier, files: Sequence[Path], *, top_k: int = 5, batch_size: int = 32,
                  progress: bool = True, on_skip: Callable[[Path, str], None] | None = None):
    """(path, [(class, probability), ...]) for each readable file, in batches; an unreadable file
    is passed to `on_skip` with the reason and left out."""
    from tqdm.auto import tqdm

    from synthshot.data.folders import load_rgb

    rows = []
    with tqdm(total=len(files), unit="img", desc="predict", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            batch, images = [], []
            for path in files[start:start + batch_size]:
                try:
                    images.append(load_rgb(Path(path)))
                    batch.append(path)
                except DataError as exc:
                    if on_skip is not None:
                        on_skip(Path(path), str(exc))
            rows += list(zip(batch, clf.predict(images, top_k=top_k)))
            bar.update(len(files[start:start + batch_size]))
    return rows


def write_predictions(rows, out: Path | None, top_k: int) -> str | None:
    """Write rows as CSV (path, class_1, probability_1, ...) or JSONL by `out`'s suffix; without
    `out`, return them as text lines for the console."""
    import csv
    import io

    from synthshot.io import atomic_write_text

    if out is None:
        return "\n".join(f"{path}\t" + "  ".join(f"{name} {100 * p:.1f}%" for name, p in top) for path, top in rows)
    if out.suffix == ".jsonl":
        text = "".join(json.dumps({"path": str(path), "top": [{"class": n, "probability": p} for n, p in top]},
                                  ensure_ascii=False) + "\n" for path, top in rows)
    elif out.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", *(f"{kind}_{k}" for k in range(1, top_k + 1) for kind in ("class", "probability"))])
        for path, top in rows:
            writer.writerow([str(path), *(value for name, p in top for value in (name, f"{p:.6f}"))])
        text = buffer.getvalue()
    else:
        raise ConfigError(f"--output {str(out)!r} must end in .csv or .jsonl")
    atomic_write_text(out, text)
    return None
