#!/usr/bin/env python
"""Maintainer script: build ``src/synthshot/data/registry/*.json`` from fetched source text.

The registry JSON files are the artefact that ships with the package; this script only documents
and reproduces how they were made. It needs a folder of plain-text snapshots of the public files
below (one class per line unless said otherwise). None of them is downloaded here: fetch them
yourself, check them against the upstream file, and pass the folder with ``--sources``.

==========================================  =================================================================
file in ``--sources``                       where its text comes from
==========================================  =================================================================
imagenet_wnids_sct_classnames.txt           ``<wnid> <name>`` lines, 1000, sorted by wnid; only the wnid column
                                            is used. Copy read from tmlr-group/SCT ``classnames.txt`` (the
                                            ImageNet synset list in wnid order, CRLF line ends upstream).
clip_imagenet_classes.txt                   openai/CLIP ``notebooks/imagenet_data.json`` key
                                            ``imagenet_classes`` (the names of
                                            ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``), 1000.
clip_imagenet_templates.txt                 same file, key ``imagenet_templates`` (80).
sun397_ClassName.txt                        SUN397 ``ClassName.txt`` (``/a/abbey`` ...), 397; copy read from
                                            tensorflow/datasets
                                            ``tensorflow_datasets/image_classification/sun397_labels.txt``.
pets_tfds_label_classes.txt                 Oxford-IIIT Pet breed file stems in class-id order (37); read from
                                            tensorflow/datasets ``image_classification/oxford_iiit_pet.py``
                                            ``_LABEL_CLASSES``.
cars_tfds_names.txt                         Stanford Cars ``devkit/cars_meta.mat`` ``class_names`` in order
                                            (196); read from tensorflow/datasets
                                            ``image_classification/cars196.py`` ``_NAMES``.
dtd_clip_prompts.txt                        DTD ``images/<folder>`` names (47); read from openai/CLIP
                                            ``data/prompts.md`` section DescribableTextures.
aircraft_clip_prompts.txt                   FGVC-Aircraft ``data/variants.txt`` lines (100); read from
                                            openai/CLIP ``data/prompts.md`` section FGVCAircraft.
food101_folders_thirdparty.txt              Food-101 ``images/<folder>`` names (101); read from
                                            ExplainableML/DataDream ``DataDream/util_data.py`` ``food101``.
food101_clip_prompts.txt                    openai/CLIP ``data/prompts.md`` section Food101 (cross-check).
flowers_cat_to_name_udacity.json            ``cat_to_name.json`` (JSON object, keys "1".."102"): the widely
                                            copied original with unordered keys, "lotus lotus", "barbeton
                                            daisy" (CoOp's own copy is on Google Drive only).
flowers_datadream.txt                       ExplainableML/DataDream ``util_data.py`` ``flowers102`` (cross-check).
caltech101_folders.txt                      Caltech-101 ``101_ObjectCategories/<folder>`` names, 102 incl.
                                            ``BACKGROUND_Google``; sorted list seen in public code.
caltech101_datadream_coop.txt               ExplainableML/DataDream ``util_data.py`` ``caltech101`` (cross-check).
cub_classes.txt                             CUB_200_2011 ``classes.txt`` (``1 001.Black_footed_Albatross``).
==========================================  =================================================================

EuroSAT and the CoOp renames/templates are small and are written out below from the CoOp source
(KaiyangZhou/CoOp ``datasets/eurosat.py``, ``datasets/caltech101.py``, ``trainers/zsclip.py``).

Usage::

    python scripts/build_registry.py --sources /path/to/snapshots [--out src/synthshot/data/registry]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# --- KaiyangZhou/CoOp datasets/eurosat.py NEW_CNAMES -------------------------------------------
EUROSAT_NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

# --- KaiyangZhou/CoOp datasets/caltech101.py ----------------------------------------------------
CALTECH_IGNORED = ["BACKGROUND_Google", "Faces_easy"]
CALTECH_NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}

# --- KaiyangZhou/CoOp trainers/zsclip.py CUSTOM_TEMPLATES ---------------------------------------
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
}
COOP_KEYS = {
    "oxford_pets": "OxfordPets",
    "oxford_flowers": "OxfordFlowers",
    "fgvc_aircraft": "FGVCAircraft",
    "dtd": "DescribableTextures",
    "eurosat": "EuroSAT",
    "stanford_cars": "StanfordCars",
    "food101": "Food101",
    "sun397": "SUN397",
    "caltech101": "Caltech101",
    "imagenet": "ImageNet",
}

# --- openai/CLIP data/prompts.md: the per-dataset template lists (zero-shot ensembles) ----------
CLIP_TEMPLATES = {
    "caltech101": ("Caltech101", [
        "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.",
        "a sketch of a {}.", "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.",
        "a embroidered {}.", "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
        "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.",
        "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}.",
        "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
        "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.",
        "the {} in a video game.", "the plushie {}.", "the origami {}.", "art of the {}.",
        "graffiti of the {}.", "a drawing of the {}.", "a doodle of the {}.",
    ]),
    "dtd": ("DescribableTextures", [
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
        "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
        "a photo of the {} thing.", "a photo of the {} object.",
    ]),
    "eurosat": ("EuroSAT", [
        "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ]),
    "fgvc_aircraft": ("FGVCAircraft", [
        "a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft.",
    ]),
    "oxford_flowers": ("Flowers102", ["a photo of a {}, a type of flower."]),
    "food101": ("Food101", ["a photo of {}, a type of food."]),
    "oxford_pets": ("OxfordPets", ["a photo of a {}, a type of pet."]),
    "sun397": ("SUN397", ["a photo of a {}.", "a photo of the {}."]),
    "stanford_cars": ("StanfordCars", [
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
        "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.",
        "a photo of my old {}.",
    ]),
    "cub": ("Birdsnap", ["a photo of a {}, a type of bird."]),
}

# --- DIPSY generation templates (synthshot method spec) -----------------------------------------
DIPSY_TEMPLATES = {
    "fgvc_aircraft": "A photo of a {} aircraft",
    "eurosat": "A satellite photo of a {}",
    "oxford_flowers": "A photo of a {} flower",
    "dtd": "A photo of a {} texture",
    "stanford_cars": "A photo of a {} car",
    "food101": "A photo of a {} food",
    "oxford_pets": "A photo of a {} pet",
    "sun397": "A photo of a {}",
    "imagenet": "A photo of a {}",
    "caltech101": "A photo of a {}",
    "cub": "A photo of a {}, a type of bird",
}

TITLES = {
    "dtd": "DTD (Describable Textures)",
    "food101": "Food-101",
    "oxford_pets": "Oxford-IIIT Pets",
    "sun397": "SUN397",
    "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVC-Aircraft",
    "imagenet": "ImageNet",
    "oxford_flowers": "Oxford Flowers-102",
    "stanford_cars": "Stanford Cars",
    "caltech101": "Caltech-101",
    "cub": "CUB-200-2011",
}

EXPECTED_COUNTS = {
    "dtd": 47, "food101": 101, "oxford_pets": 37, "sun397": 397, "eurosat": 10,
    "fgvc_aircraft": 100, "imagenet": 1000, "oxford_flowers": 102, "stanford_cars": 196,
    "caltech101": 100, "cub": 200,
}

TEMPLATE_SOURCE = "synthshot DIPSY generation prompts (project method spec)"


def _slug(text: str) -> str:
    return " ".join(re.split(r"[\s_\-/]+", text.lower())).strip()


def _lines(path: Path) -> list[str]:
    return [line.rstrip("\r") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        sys.exit(f"build_registry: {msg}")


def _zeroshot(name: str) -> tuple[list[str], str]:
    """CoOp's single template first, then the CLIP prompts.md ensemble without repeats."""
    out: list[str] = []
    parts: list[str] = []
    if name in COOP_TEMPLATES:
        out.append(COOP_TEMPLATES[name])
        parts.append(f"[0]: KaiyangZhou/CoOp trainers/zsclip.py CUSTOM_TEMPLATES['{COOP_KEYS[name]}']")
    if name == "imagenet":
        extra, where = None, "openai/CLIP notebooks/imagenet_data.json imagenet_templates"
    elif name in CLIP_TEMPLATES:
        section, extra = CLIP_TEMPLATES[name]
        where = f"openai/CLIP data/prompts.md section {section} templates"
    else:
        extra, where = [], ""
    if extra is None:
        extra = _SOURCES_CACHE["clip_imagenet_templates"]
    added = [t for t in extra if t not in out]
    if added:
        first = len(out)
        out.extend(added)
        label = f"[{first}:]" if first else "[0:]"
        parts.append(f"{label}: {where} (repeats of earlier entries dropped)")
    if name == "cub":
        parts.append("CUB is not in CoOp; the bird template is CLIP's Birdsnap one")
    return out, "; ".join(parts)


_SOURCES_CACHE: dict[str, list[str]] = {}


def build(src: Path) -> dict[str, dict]:
    S = lambda f: src / f  # noqa: E731
    _SOURCES_CACHE["clip_imagenet_templates"] = _lines(S("clip_imagenet_templates.txt"))
    out: dict[str, dict] = {}

    def entry(name: str, classes: list[dict], sources: dict[str, str], note: str = "", **extra) -> None:
        zs, zs_src = _zeroshot(name)
        sources = dict(sources)
        sources["template"] = TEMPLATE_SOURCE
        sources["zeroshot_templates"] = zs_src
        _check(len(classes) == EXPECTED_COUNTS[name], f"{name}: {len(classes)} classes")
        for i, c in enumerate(classes):
            c["label"] = i
        data = {
            "name": name,
            "title": TITLES[name],
            "protocol": "official" if name == "cub" else "coop",
            "complete": True,
            "num_classes": len(classes),
            "template": DIPSY_TEMPLATES[name],
            "zeroshot_templates": zs,
            "sources": sources,
        }
        if note:
            data["note"] = note
        data.update(extra)
        data["classes"] = [{"label": c["label"], "name": c["name"], "official": c["official"],
                            **({"aliases": c["aliases"]} if c.get("aliases") else {})} for c in classes]
        out[name] = data

    # DTD ---------------------------------------------------------------------------------------
    dtd = _lines(S("dtd_clip_prompts.txt"))
    _check(sorted(dtd) == dtd, "dtd not sorted")
    entry("dtd", [{"name": f.replace("_", " "), "official": f} for f in sorted(dtd)], {
        "official": "dtd-r1.0.1 images/<folder> names; list read from openai/CLIP data/prompts.md "
                    "DescribableTextures (= the folder names; same list in ExplainableML/DataDream "
                    "DataDream/util_data.py)",
        "names": "folder name with '_' -> ' ' (KaiyangZhou/CoOp datasets/dtd.py + trainers/coop.py)",
        "order": "sorted folder names (KaiyangZhou/CoOp datasets/dtd.py read_and_split_data)",
    })

    # Food-101 ----------------------------------------------------------------------------------
    food = _lines(S("food101_folders_thirdparty.txt"))
    clip_food = _lines(S("food101_clip_prompts.txt"))
    _check([c.replace(" ", "_") for c in clip_food] == food, "food101 lists disagree")
    entry("food101", [{"name": f.replace("_", " "), "official": f} for f in sorted(food)], {
        "official": "food-101 images/<folder> names (meta/classes.txt); list read from "
                    "ExplainableML/DataDream DataDream/util_data.py food101, cross-checked against "
                    "openai/CLIP data/prompts.md Food101",
        "names": "folder name with '_' -> ' ' (KaiyangZhou/CoOp trainers/coop.py)",
        "order": "sorted folder names (KaiyangZhou/CoOp datasets/food101.py uses "
                 "DTD.read_and_split_data); note 'cheese_plate' sorts before 'cheesecake'",
    })

    # Oxford-IIIT Pets --------------------------------------------------------------------------
    pets = _lines(S("pets_tfds_label_classes.txt"))
    entry("oxford_pets", [{"name": p.lower().replace("_", " "), "official": p} for p in pets], {
        "official": "image file-name stems of images.tar.gz (cat breeds capitalised); list read from "
                    "tensorflow/datasets tensorflow_datasets/image_classification/oxford_iiit_pet.py "
                    "_LABEL_CLASSES",
        "names": "stem.lower() (KaiyangZhou/CoOp datasets/oxford_pets.py) with '_' -> ' ' "
                 "(trainers/coop.py)",
        "order": "annotations class id 1..37 (KaiyangZhou/CoOp datasets/oxford_pets.py label-1)",
    })

    # SUN397 ------------------------------------------------------------------------------------
    sun = _lines(S("sun397_ClassName.txt"))
    sun_classes = []
    for path in sun:
        rel = path.strip()[1:]  # CoOp: line.strip()[1:]
        parts = rel.split("/")[1:]  # drop the first letter
        coop_name = " ".join(parts[::-1])  # put indoor/outdoor first
        name = coop_name.replace("_", " ")
        aliases: list[str] = []
        seen = {_slug(path), _slug(name)}
        for a in (rel, "/".join(parts), " ".join(p.replace("_", " ") for p in parts)):
            if _slug(a) not in seen:  # only forms the registry's folder matching would not find anyway
                seen.add(_slug(a))
                aliases.append(a)
        sun_classes.append({"name": name, "official": path, "aliases": aliases})
    entry("sun397", sun_classes, {
        "official": "SUN397 ClassName.txt paths; list read from tensorflow/datasets "
                    "tensorflow_datasets/image_classification/sun397_labels.txt",
        "names": "KaiyangZhou/CoOp datasets/sun397.py read_data (drop the letter, reverse the parts) "
                 "with '_' -> ' ' (trainers/coop.py)",
        "order": "ClassName.txt line order (KaiyangZhou/CoOp datasets/sun397.py cname2lab)",
        "aliases": "the path without its letter and the CLIP/CLIP_benchmark form "
                   "'apartment building outdoor' (openai/CLIP data/prompts.md SUN397), where they differ "
                   "from the name and the path",
    })

    # EuroSAT -----------------------------------------------------------------------------------
    entry("eurosat", [{"name": EUROSAT_NEW_CNAMES[f], "official": f} for f in sorted(EUROSAT_NEW_CNAMES)], {
        "official": "EuroSAT 2750/<folder> names (keys of CoOp NEW_CNAMES)",
        "names": "KaiyangZhou/CoOp datasets/eurosat.py NEW_CNAMES",
        "order": "sorted folder names (KaiyangZhou/CoOp datasets/eurosat.py uses "
                 "DTD.read_and_split_data)",
    })

    # FGVC-Aircraft -----------------------------------------------------------------------------
    air = _lines(S("aircraft_clip_prompts.txt"))
    entry("fgvc_aircraft", [{"name": v, "official": v} for v in air], {
        "official": "fgvc-aircraft-2013b data/variants.txt lines; list read from openai/CLIP "
                    "data/prompts.md FGVCAircraft (same list in ExplainableML/DataDream util_data.py)",
        "names": "variant names as is (KaiyangZhou/CoOp datasets/fgvc_aircraft.py)",
        "order": "variants.txt line order (KaiyangZhou/CoOp datasets/fgvc_aircraft.py cname2lab)",
    }, note="Variant names contain '/' ('F-16A/B', 'F/A-18', ...) which cannot be folder names; "
            "folder matching treats '/', '_', '-' and spaces alike.")

    # ImageNet ----------------------------------------------------------------------------------
    wnids = [line.split(" ", 1)[0] for line in _lines(S("imagenet_wnids_sct_classnames.txt"))]
    names = _lines(S("clip_imagenet_classes.txt"))
    _check(len(wnids) == len(names) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000,
           "imagenet lists")
    dups = sorted({n for n in names if names.count(n) > 1})
    entry("imagenet", [{"name": n, "official": w} for w, n in zip(wnids, names)], {
        "official": "ImageNet-1k wnids (train/<wnid> folders), sorted; the wnid column of "
                    "tmlr-group/SCT classnames.txt (its WordNet names are not used)",
        "names": "openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb imagenet_classes, "
                 "read from openai/CLIP notebooks/imagenet_data.json; CoOp's classnames.txt "
                 "(Google Drive only, not read here) pairs the sorted wnids with these CLIP names",
        "order": "sorted wnid folders (KaiyangZhou/CoOp datasets/imagenet.py read_data)",
    }, note="The CLIP names repeat two strings: 'missile' (n03773504, n04008634) and 'sunglasses' "
            "(n04355933, n04356056). They are kept as published; these classes are told apart only "
            "by their wnid.", duplicate_names=dups)

    # Oxford Flowers-102 ------------------------------------------------------------------------
    c2n = json.loads(S("flowers_cat_to_name_udacity.json").read_text(encoding="utf-8"))
    _check(sorted(int(k) for k in c2n) == list(range(1, 103)), "cat_to_name keys")
    flowers = [{"name": c2n[str(i)], "official": str(i)} for i in range(1, 103)]
    _check([f["name"] for f in flowers] == _lines(S("flowers_datadream.txt")), "flowers lists disagree")
    entry("oxford_flowers", flowers, {
        "official": "imagelabels.mat label numbers 1..102 (the dataset publishes no names)",
        "names": "cat_to_name.json as read by KaiyangZhou/CoOp datasets/oxford_flowers.py; CoOp's "
                 "copy is on Google Drive only, so the names come from the widely copied original "
                 "cat_to_name.json (unordered keys; 'lotus lotus', 'barbeton daisy'), which equals "
                 "ExplainableML/DataDream DataDream/util_data.py flowers102 (CoOp naming)",
        "order": "label number - 1 (KaiyangZhou/CoOp datasets/oxford_flowers.py)",
    }, note="Other copies of cat_to_name.json say 'lotus' for 78 (e.g. vturrisi/disef) or "
            "'barberton daisy' for 41; CLIP uses 'lotus' and 'air plant' (93). The names here follow "
            "the CoOp/DataDream file.")

    # Stanford Cars -----------------------------------------------------------------------------
    cars = _lines(S("cars_tfds_names.txt"))
    car_classes = []
    for c in cars:
        words = c.split(" ")
        year = words.pop(-1)
        words.insert(0, year)
        car_classes.append({"name": " ".join(words), "official": c})
    entry("stanford_cars", car_classes, {
        "official": "devkit/cars_meta.mat class_names; list read from tensorflow/datasets "
                    "tensorflow_datasets/image_classification/cars196.py _NAMES (same list and order "
                    "in openai/CLIP data/prompts.md StanfordCars)",
        "names": "year moved to the front (KaiyangZhou/CoOp datasets/stanford_cars.py read_data)",
        "order": "cars_meta.mat order (KaiyangZhou/CoOp datasets/stanford_cars.py label-1)",
    })

    # Caltech-101 -------------------------------------------------------------------------------
    folders = _lines(S("caltech101_folders.txt"))
    _check(len(folders) == 102 and sorted(folders) == folders, "caltech folders")
    kept = sorted(f for f in folders if f not in CALTECH_IGNORED)
    cal = [{"name": CALTECH_NEW_CNAMES.get(f, f).replace("_", " "), "official": f} for f in kept]
    dd = _lines(S("caltech101_datadream_coop.txt"))
    _check([c.replace(" ", "_") for c in (x["name"] for x in cal)] == dd, "caltech lists disagree")
    entry("caltech101", cal, {
        "official": "101_ObjectCategories/<folder> names (sorted list seen in public code, e.g. the "
                    "categories torchvision's Caltech101 lists); cross-checked against "
                    "ExplainableML/DataDream DataDream/util_data.py caltech101",
        "names": "KaiyangZhou/CoOp datasets/caltech101.py NEW_CNAMES, then '_' -> ' ' "
                 "(trainers/coop.py)",
        "order": "sorted folder names, case-sensitive (upper case first), without IGNORED "
                 "(KaiyangZhou/CoOp datasets/dtd.py read_and_split_data)",
    }, note="CoOp drops BACKGROUND_Google and Faces_easy (KaiyangZhou/CoOp datasets/caltech101.py "
            "IGNORED), leaving 100 of the 102 folders.",
        excluded=[{"official": "BACKGROUND_Google", "reason": "background clutter class; IGNORED in KaiyangZhou/CoOp datasets/caltech101.py"},
                  {"official": "Faces_easy", "reason": "second face class beside 'Faces'; IGNORED in KaiyangZhou/CoOp datasets/caltech101.py"}])

    # CUB-200-2011 ------------------------------------------------------------------------------
    cub = []
    for line in _lines(S("cub_classes.txt")):
        num, folder = line.split(" ", 1)
        _check(folder.startswith(f"{int(num):03d}."), f"cub line {line!r}")
        cub.append({"name": folder.split(".", 1)[1].replace("_", " "), "official": folder})
    entry("cub", cub, {
        "official": "CUB_200_2011/classes.txt (= images/<folder> names); read from a public copy "
                    "(a dataset card's Id2String block), spot-checked against a second public copy",
        "names": "part after the number with '_' -> ' '",
        "order": "classes.txt class id 1..200",
    }, note="CUB is not part of CoOp's benchmark; the official class ids give the order. Names keep "
            "the dataset's spelling (e.g. 'Artic Tern', 'Brewer Blackbird').")

    return out


def dumps(d: dict) -> str:
    """Readable, diff-friendly JSON: two-space indent, one class per line."""
    head = {k: v for k, v in d.items() if k != "classes"}
    text = json.dumps(head, ensure_ascii=False, indent=2)
    rows = ",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in d["classes"])
    return text[:-2] + ',\n  "classes": [\n' + rows + "\n  ]\n}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=Path, required=True)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "src" / "synthshot" / "data" / "registry")
    args = ap.parse_args()
    data = build(args.sources)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, d in data.items():
        (args.out / f"{name}.json").write_text(dumps(d), encoding="utf-8")
        print(f"{name}: {d['num_classes']} classes -> {args.out / (name + '.json')}")


if __name__ == "__main__":
    main()
