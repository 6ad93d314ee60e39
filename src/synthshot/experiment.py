"""One resolved experiment: everything a run needs, built once from the resolved config.

A stage never re-derives its inputs from the config: it receives an `Experiment`, which knows

* the resolved config (tiny kit applied, the synthetic set's folder fixed) and the hub options;
* the output folder of every stage (`Layout`) and the stage state file;
* the few-shot split (made by the `data` stage, read by every other) and the class names, both
  the class key (a folder or split-file name) and the name used in prompts;
* the synthetic set: the folder it lives in (shared between the runs of a sweep), the settings
  every image of it was made with, and exactly which images this run uses (the first
  `generation.images_per_class` of each class);
* the test and validation sets of the training-free classifiers and of fine-tuning, each pair
  checked disjoint once, and held out from the largest few-shot split of a shots sweep so that
  every run of the sweep is tested on the same images.

Everything is computed on first use and kept, so a stage that needs only the output folders
never reads an image.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthshot.config import RunConfig
from synthshot.data.labelled import LabelledImages
from synthshot.errors import ConfigError, DataError

DEFAULT_TEMPLATE = "A photo of a {}"
STATE_FILE = Path(".synthshot") / "stages.json"


@dataclass(frozen=True)
class Layout:
    """Where each stage of a run writes (`synthetic` may be shared with other runs)."""

    out: Path
    synthetic: Path

    @property
    def splits(self) -> Path:
        return self.out / "splits"

    @property
    def prompts(self) -> Path:
        return self.out / "prompts"

    @property
    def prompts_file(self) -> Path:
        return self.prompts / "prompts.json"

    @property
    def similarity(self) -> Path:
        return self.out / "similarity"

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def prototypes(self) -> Path:
        return self.out / "prototypes"

    @property
    def finetune(self) -> Path:
        return self.out / "finetune"

    @property
    def evaluate(self) -> Path:
        return self.out / "evaluate"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def state_file(self) -> Path:
        return self.out / STATE_FILE


@dataclass
class FewShotData:
    """The few-shot split of a run: class key -> image files, and the names used in prompts."""

    split_file: Path | None  # None in zero-shot runs
    split: dict[str, list[Path]]
    class_names: dict[str, str]  # class key -> human-readable name used in prompts
    counts: dict[str, int] | None = None  # images available per class, when the split was just made

    @property
    def classes(self) -> list[str]:
        return list(self.split)

    def prompts(self, template: str) -> dict[str, str]:
        from synthshot.prompts.templates import fill_template

        return {key: fill_template(template, name) for key, name in self.class_names.items()}

    def files(self) -> set[Path]:
        return {p.resolve() for files in self.split.values() for p in files}

    def labelled(self) -> LabelledImages:
        """The few-shot images as labelled images (labels index `classes`)."""
        return LabelledImages(
            files=[p for files in self.split.values() for p in files],
            labels=[i for i, files in enumerate(self.split.values()) for _ in files],
            classes=self.classes,
            source=str(self.split_file),
        )


@dataclass
class EvalSets:
    """A test set and an optional validation set, checked disjoint."""

    test: LabelledImages
    val: LabelledImages | None


class Experiment:
    """The resolved experiment of one run (one combination of a sweep)."""

    def __init__(self, config: RunConfig):
        config = _with_tiny_kit(config)
        if config.synthetic_dir is None:
            from synthshot.generation.fingerprint import set_key

            config = config.model_copy(update={"synthetic_dir": config.output_dir / f"synthetic-{set_key(config)}"})
        self.config = config
        self.layout = Layout(out=config.output_dir, synthetic=config.synthetic_dir)

    # ------------------------------------------------------------------------------ Python API
    @classmethod
    def from_config(cls, config: str | Path | dict | RunConfig | None = None, /, **overrides: Any) -> Experiment:
        """An experiment from a YAML file, a preset name, a config dict or a `RunConfig`, with
        overrides by dotted key (values as Python objects):

            exp = Experiment.from_config("cfg.yaml", **{"data.shots": 4, "output_dir": "runs/s4"})
        """
        from synthshot.config import apply_override, expand_presets, load_config, validate_config

        if isinstance(config, RunConfig):
            tree = config.model_dump(mode="json")
        elif isinstance(config, dict):
            tree = json.loads(json.dumps(config, default=str))
        else:
            tree = load_config(config).model_dump(mode="json") if config is not None else {}
        for key, value in overrides.items():
            apply_override(tree, key.split("."), value)
        return cls(validate_config(expand_presets(tree), RunConfig, source=str(config or "config")))

    def run(self, stages: list[str] | None = None, *, force: bool = False, echo=print) -> list[str]:
        """Run the config's stages (or only `stages`, in pipeline order), skipping those already
        done unless `force`; return the names of the stages that ran."""
        from synthshot import runs
        from synthshot.stages import STAGES

        if stages is None:
            return runs.run_stages(self, force=force, echo=echo)
        unknown = [name for name in stages if name not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
        prints = runs.stage_fingerprints(self)
        ran = []
        for name in [s for s in STAGES if s in stages]:
            if not force and runs.is_finished(self, name, prints[name]):
                continue
            options = {"mode": "restart" if force else "auto"} if name == "finetune" else {}
            runs.run_stage(self, name, echo=echo, **options)
            ran.append(name)
        return ran

    def results(self) -> dict[str, dict]:
        """The results of the run's evaluating stages: {"evaluate": results.json, "finetune": ...}."""
        from synthshot.results import read_results

        found = {}
        for stage, folder in (("evaluate", self.layout.evaluate), ("finetune", self.layout.finetune)):
            if (folder / "results.json").is_file():
                found[stage] = read_results(folder / "results.json")
        return found

    def classifier(self, method: str | None = None):
        """The run's trained classifier (`synthshot.load_classifier` on the output folder)."""
        from synthshot.classifier import load_classifier

        return load_classifier(self.layout.out, method, device=self.config.device)

    def claim_output(self) -> Path:
        """Make the output folder synthshot's before the first write into it: a new or empty folder
        gets the `.synthshot/` marker, a folder with it is accepted, and any other folder (someone
        else's files) is refused with a one-line error, so nothing of theirs is ever written over."""
        from synthshot.io import claim_folder

        return claim_folder(self.layout.out, "output folder (output_dir)")

    # ------------------------------------------------------------------------------ models
    @functools.cached_property
    def hub(self):
        from synthshot.models.hub import HubOptions

        c = self.config
        return HubOptions(offline=c.offline, revision=c.models.revision, cache_dir=c.models.cache_dir)

    @functools.cached_property
    def device(self) -> str:
        from synthshot.models.hub import resolve_device

        return resolve_device(self.config.device)

    # -------------------------------------------------------------------------------- data
    @functools.cached_property
    def dataset_name(self) -> str:
        data = self.config.data
        return name_dataset(data.dataset, data.demo is not None, data.root)

    @functools.cached_property
    def data_root(self) -> Path | None:
        """Where the labelled images are: data.root, the demo dataset drawn for the run, or None."""
        data = self.config.data
        if data.demo is not None:
            from synthshot.data.demo import make_demo_dataset

            self.claim_output()
            root = self.layout.out / "demo-data"
            demo = data.demo
            make_demo_dataset(root, classes=demo.classes, images_per_class=demo.images_per_class, size=demo.size,
                              seed=demo.seed)
            return root
        return Path(data.root) if data.root is not None else None

    def _require_root(self) -> Path:
        if self.data_root is None:
            raise ConfigError("no images given: set data.root to an image folder (root/<class>/<image>) or data.demo")
        return self.data_root

    @functools.cached_property
    def split_file(self) -> Path | None:
        from synthshot.data.fewshot import split_path

        data = self.config.data
        if data.shots == 0:
            return None
        return split_path(self.layout.out, self.dataset_name, data.shots, data.split_seed)

    @functools.cached_property
    def data(self) -> FewShotData:
        """The few-shot split: read from the run's split file, or made (seeded) and saved there."""
        from synthshot.data.fewshot import load_split, make_fewshot_split, save_split

        data = self.config.data
        if data.shots == 0:
            return self._zero_shot()
        path, root = self.split_file, self._require_root()
        counts = None
        if path.is_file():
            split = load_split(path, root=root)
        else:
            pool = self.labelled_pool
            split = make_fewshot_split(pool, data.shots, data.split_seed, allow_fewer=data.allow_fewer,
                                       skip_corrupt=data.skip_corrupt)
            save_split(path, split, root=root)
            counts = {name: len(files) for name, files in pool.items()}
        return FewShotData(split_file=path, split=split, class_names=self._class_names(list(split)), counts=counts)

    @functools.cached_property
    def labelled_pool(self) -> dict[str, list[Path]]:
        """class -> every image the few-shot split may draw from: an image folder (or a peer
        layout), or the train list of a CoOp split file."""
        from synthshot.data.folders import resolve_image_root, scan_image_folder

        data, root = self.config.data, self._require_root()
        if data.layout == "coop":
            split = self.coop_split
            missing = split.missing_files("train")
            if missing:
                shown = ", ".join(str(p) for p in missing[:5])
                raise DataError(f"{len(missing)} train file(s) of {split.source} are missing under {root}, e.g. {shown}")
            return split.by_class("train")
        return scan_image_folder(resolve_image_root(root, data.layout, shots=data.shots, seed=data.split_seed))

    @functools.cached_property
    def coop_split_file(self) -> Path:
        """data.split_file, or the split `synthshot datasets prepare` wrote under data.root (the
        CoOp protocol where the dataset has one, else the official split)."""
        if self.config.data.split_file is not None:
            return self.config.data.split_file
        folder = self._require_root() / "synthshot"
        for name in ("split_coop.json", "split_official.json"):
            if (folder / name).is_file():
                return folder / name
        raise DataError(
            f"{folder} holds no split file (split_coop.json or split_official.json): prepare the dataset with "
            "`synthshot datasets prepare NAME --root DIR` and point data.root at DIR/<dataset folder>, or set "
            "data.split_file"
        )

    @functools.cached_property
    def coop_split(self):
        from synthshot.data.coop import load_coop_split

        return load_coop_split(self.coop_split_file, image_root=self._require_root())

    def _zero_shot(self) -> FewShotData:
        data = self.config.data
        if self.data_root is not None:
            if data.layout == "coop":
                names = self.coop_split.class_keys
            else:
                from synthshot.data.folders import resolve_image_root, scan_image_folder

                root = resolve_image_root(self.data_root, data.layout, shots=1, seed=data.split_seed)
                names = list(scan_image_folder(root))
        elif data.dataset is not None:
            from synthshot.data.registry import get_dataset

            names = get_dataset(data.dataset).class_names()
        else:
            raise ConfigError("zero-shot (data.shots=0) needs class names: set data.dataset or data.root")
        return FewShotData(split_file=None, split={name: [] for name in names}, class_names=self._class_names(names))

    def _class_names(self, keys: list[str]) -> dict[str, str]:
        """class key -> prompt name: from the CoOp split file (which defines the names) or the registry."""
        from synthshot.data.registry import resolve_class_names

        if self.config.data.layout == "coop" and self.data_root is not None:
            names = self.coop_split.prompt_names()
            return {key: names[key] for key in keys}
        return resolve_class_names(keys, self.config.data.dataset)

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @functools.cached_property
    def template(self) -> str:
        """The generation prompt template: generation.template, the dataset's, or a generic one."""
        if self.config.generation.template:
            return self.config.generation.template
        if self.config.data.dataset:
            from synthshot.data.registry import get_dataset

            return get_dataset(self.config.data.dataset).template
        return DEFAULT_TEMPLATE

    # --------------------------------------------------------------------- synthetic set
    @functools.cached_property
    def image_settings(self) -> dict:
        """Every setting a synthetic image depends on (recorded with each image)."""
        from synthshot.generation.fingerprint import image_settings

        return image_settings(self.config)

    @functools.cached_property
    def settings_digest(self) -> str:
        from synthshot.generation.fingerprint import settings_digest

        return settings_digest(self.image_settings)

    @property
    def has_synthetic(self) -> bool:
        """Whether the run's synthetic set has a manifest (generation has started)."""
        from synthshot.generation.runner import MANIFEST

        return (self.layout.synthetic / MANIFEST).is_file()

    @functools.cached_property
    def synthetic(self):
        """The synthetic images this run uses: the first `images_per_class` of each class of the
        set in `layout.synthetic`, made with this run's settings."""
        from synthshot.generation.sets import read_synthetic_set

        return read_synthetic_set(
            self.layout.synthetic,
            self.classes,
            self.data.class_names,
            images_per_class=self.config.generation.images_per_class,
            settings=self.settings_digest,
        )

    # ------------------------------------------------------------------ evaluation sets
    @functools.cached_property
    def holdout_exclusion(self) -> set[Path]:
        """The few-shot images held out of `heldout` evaluation sets: those of the largest split
        of the sweep (`data.holdout_shots`; the splits are nested), else of this run's split."""
        if self.config.data.shots == 0:
            return set()
        shots = max(self.config.data.holdout_shots or 0, self.config.data.shots)
        if shots == self.config.data.shots:
            return self.data.files()
        from synthshot.data.fewshot import make_fewshot_split

        largest = make_fewshot_split(self.labelled_pool, shots, self.config.data.split_seed, allow_fewer=True,
                                     skip_corrupt=self.config.data.skip_corrupt)
        return {p.resolve() for files in largest.values() for p in files} | self.data.files()

    def _eval_source(self, source):
        """An evaluation source with the run's defaults: a CoOp source without its own split file
        reads the data's split file and root."""
        if source.source != "coop" or source.split_file is not None:
            return source
        return source.model_copy(update={"split_file": self.coop_split_file, "root": source.root or self.data_root})

    def _load_eval(self, source) -> LabelledImages:
        from synthshot.data.labelled import load_labelled_images

        return load_labelled_images(self._eval_source(source), self.classes, self.data.class_names,
                                    data_root=self.data_root, exclude=self.holdout_exclusion, seed=self.config.seed)

    def _eval_sets(self, test_source, val_source, section: str) -> EvalSets:
        test = self._load_eval(test_source)
        val = self._load_eval(val_source) if val_source is not None else None
        if val is not None:
            shared = {p.resolve() for p in val.files} & {p.resolve() for p in test.files}
            if shared:
                raise ConfigError(
                    f"{section}.val and {section}.test share {len(shared)} image(s) (e.g. {min(shared)}): choosing "
                    "on test images is not honest; give validation images of their own (source folder, or coop "
                    "with split=val)"
                )
        return EvalSets(test=test, val=val)

    @functools.cached_property
    def classifier_sets(self) -> EvalSets:
        """Test and validation sets of the training-free classifiers (`classifier.test/val`)."""
        c = self.config.classifier
        return self._eval_sets(c.test, c.val, "classifier")

    @functools.cached_property
    def finetune_sets(self) -> EvalSets:
        """Test and validation sets of fine-tuning (`finetune.test/val`)."""
        f = self.config.finetune
        return self._eval_sets(f.test, f.val, "finetune")

    def run_info(self, *, test: LabelledImages | None = None, images_per_class: int | None = None) -> dict:
        """What identifies a run in tables and plots, and which test set it was measured on."""
        c = self.config
        info = {
            "name": c.output_dir.name,
            "dataset": self.dataset_name,
            "shots": c.data.shots,
            "images_per_class": images_per_class if images_per_class is not None else 0,
            "generation_mode": c.generation.mode,
            "backbone": c.models.clip,
            "multiscale": c.features.multiscale,
            "classes": len(self.classes),
        }
        if test is not None:
            info["test_set"] = describe_images(test)
        return info


# Folder names that say which part of a dataset a folder holds, not which dataset it is.
SPLIT_FOLDERS = frozenset({"train", "training", "trainval", "val", "valid", "validation", "test", "testing", "all",
                           "images", "imgs", "jpg", "jpeg", "data"})


def name_dataset(dataset: str | None, demo: bool, root: str | Path | None) -> str:
    """The dataset's name in split files, tables and the report: `data.dataset`, "demo", or the
    image folder's name, passing over folders named after a split (`cats/train` is "cats")."""
    if dataset:
        return dataset
    if demo or root is None:
        return "demo" if demo else "images"
    folder = Path(root).expanduser().absolute()
    for candidate in (folder, *folder.parents):
        if candidate.name and candidate.name.lower() not in SPLIT_FOLDERS:
            return candidate.name
    return folder.name or "images"


def describe_images(images: LabelledImages) -> dict:
    """Which images an evaluation used: the source, the count and a digest of the files."""
    import hashlib

    text = "\n".join(f"{label}\t{Path(p).name}" for p, label in zip(images.files, images.labels))
    return {"source": images.source, "num_images": len(images),
            "digest": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}


def _with_tiny_kit(config: RunConfig) -> RunConfig:
    """With `models.tiny_kit` set, build the kit there if missing and point every model at it."""
    if config.models.tiny_kit is None:
        return config
    from synthshot.models.tiny import kit_model_settings, make_tiny_kit

    kit = make_tiny_kit(config.models.tiny_kit)
    return config.model_copy(update={"models": config.models.model_copy(update=kit_model_settings(kit))})


def synthetic_set_name(config: RunConfig) -> str:
    """`synthetic-<key>`: the folder name of the set made with this config's generation inputs.
    Runs (or reruns) with the same inputs share it; other settings make another set."""
    from synthshot.generation.fingerprint import set_key

    return f"synthetic-{set_key(_with_tiny_kit(config))}"
