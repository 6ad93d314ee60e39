"""The dataset registry: class lists, names, templates and folder matching (offline, fast)."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from synthshot.data.registry import (
    ClassEntry,
    DatasetInfo,
    get_dataset,
    list_datasets,
    resolve_class_names,
)
from synthshot.errors import DataError

COUNTS = {
    "dtd": 47,
    "food101": 101,
    "oxford_pets": 37,
    "sun397": 397,
    "eurosat": 10,
    "fgvc_aircraft": 100,
    "imagenet": 1000,
    "oxford_flowers": 102,
    "stanford_cars": 196,
    "caltech101": 100,
    "cub": 200,
}

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

# KaiyangZhou/CoOp trainers/zsclip.py CUSTOM_TEMPLATES
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

ALL = sorted(COUNTS)


def _one_placeholder(t: str) -> bool:
    return t.count("{}") == 1 and "{" not in t.replace("{}", "") and "}" not in t.replace("{}", "")


# -- the packaged data --------------------------------------------------------------------------


def test_list_datasets_is_the_eleven_benchmarks():
    assert list_datasets() == ALL


def test_json_files_are_package_data():
    folder = resources.files("synthshot.data").joinpath("registry")
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".json")) == [f"{n}.json" for n in ALL]


@pytest.mark.parametrize("name", ALL)
def test_counts_and_labels(name):
    info = get_dataset(name)
    assert isinstance(info, DatasetInfo)
    assert info.name == name
    assert info.num_classes == COUNTS[name] == len(info.classes)
    assert [c.label for c in info.classes] == list(range(COUNTS[name]))
    assert all(isinstance(c, ClassEntry) for c in info.classes)
    assert info.complete


@pytest.mark.parametrize("name", ALL)
def test_no_duplicates(name):
    info = get_dataset(name)
    officials = info.official_names()
    assert len(set(officials)) == len(officials)
    names = info.class_names()
    dups = sorted({n for n in names if names.count(n) > 1})
    # Only ImageNet repeats names, as CLIP published them; they are listed in the JSON.
    assert dups == sorted(info.duplicate_names)
    assert all(n.strip() == n and n for n in names + officials)


def test_imagenet_duplicate_names_are_the_two_known_ones():
    info = get_dataset("imagenet")
    assert sorted(info.duplicate_names) == ["missile", "sunglasses"]
    by_wnid = {c.official: c.name for c in info.classes}
    assert by_wnid["n03773504"] == by_wnid["n04008634"] == "missile"
    assert by_wnid["n04355933"] == by_wnid["n04356056"] == "sunglasses"


@pytest.mark.parametrize("name", ALL)
def test_templates(name):
    info = get_dataset(name)
    assert info.template == DIPSY_TEMPLATES[name]
    assert _one_placeholder(info.template)
    assert info.zeroshot_templates and all(_one_placeholder(t) for t in info.zeroshot_templates)
    assert len(set(info.zeroshot_templates)) == len(info.zeroshot_templates)
    if name in COOP_TEMPLATES:
        assert info.zeroshot_templates[0] == COOP_TEMPLATES[name]
    else:
        assert info.zeroshot_templates[0] == "a photo of a {}, a type of bird."
    first = info.classes[0].name
    assert info.prompt(first) == info.template.format(first)
    assert info.zeroshot_prompts(first)[0] == info.zeroshot_templates[0].format(first)


@pytest.mark.parametrize("name", ALL)
def test_sources_are_recorded(name):
    info = get_dataset(name)
    for key in ("official", "names", "order", "template", "zeroshot_templates"):
        assert info.sources.get(key), f"{name}: no source for {key}"
    assert info.protocol == ("official" if name == "cub" else "coop")


def test_get_dataset_is_cached():
    assert get_dataset("eurosat") is get_dataset("eurosat")


# -- spot checks against the published lists --------------------------------------------------


def test_imagenet():
    info = get_dataset("imagenet")
    assert (info.classes[0].official, info.classes[0].name) == ("n01440764", "tench")
    assert (info.classes[1].official, info.classes[1].name) == ("n01443537", "goldfish")
    assert (info.classes[999].official, info.classes[999].name) == ("n15075141", "toilet paper")
    wnids = info.official_names()
    assert wnids == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)


def test_eurosat():
    info = get_dataset("eurosat")
    assert info.official_names() == [
        "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
        "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
    ]
    assert info.name_for_folder("AnnualCrop") == "Annual Crop Land"
    assert info.name_for_folder("SeaLake") == "Sea or Lake"
    assert info.name_for_folder("Highway") == "Highway or Road"


def test_caltech101():
    info = get_dataset("caltech101")
    assert info.class_names()[:5] == ["face", "leopard", "motorbike", "accordion", "airplane"]
    assert info.name_for_folder("airplanes") == "airplane"
    assert info.name_for_folder("Faces") == "face"
    assert info.name_for_folder("Leopards") == "leopard"
    assert info.name_for_folder("Motorbikes") == "motorbike"
    assert info.name_for_folder("car_side") == "car side"
    officials = info.official_names()
    assert "BACKGROUND_Google" not in officials and "Faces_easy" not in officials
    assert officials[-1] == "yin_yang"


def test_caltech101_excluded_folders_are_explained():
    for folder in ("Faces_easy", "BACKGROUND_Google", "faces_easy"):
        with pytest.raises(DataError, match=r"leaves out"):
            get_dataset("caltech101").name_for_folder(folder)


def test_stanford_cars_year_moves_to_front():
    info = get_dataset("stanford_cars")
    c0 = info.classes[0]
    assert (c0.official, c0.name) == ("AM General Hummer SUV 2000", "2000 AM General Hummer SUV")
    last = info.classes[-1]
    assert (last.official, last.name) == ("smart fortwo Convertible 2012", "2012 smart fortwo Convertible")
    for c in info.classes:
        *rest, year = c.official.split(" ")
        assert re.fullmatch(r"(19|20)\d\d", year)
        assert c.name == " ".join([year, *rest])


def test_sun397_reverses_path_parts():
    info = get_dataset("sun397")
    assert info.classes[0].official == "/a/abbey" and info.classes[0].name == "abbey"
    by_official = {c.official: c.name for c in info.classes}
    assert by_official["/a/apartment_building/outdoor"] == "outdoor apartment building"
    assert by_official["/t/theater/indoor_procenium"] == "indoor procenium theater"
    assert by_official["/w/wine_cellar/barrel_storage"] == "barrel storage wine cellar"
    assert all(re.fullmatch(r"/[a-z]/[a-z_/]+", o) for o in by_official)
    assert info.official_names() == sorted(info.official_names())


def test_cub():
    info = get_dataset("cub")
    assert info.classes[0].official == "001.Black_footed_Albatross"
    assert info.classes[0].name == "Black footed Albatross"
    assert info.classes[199].official == "200.Common_Yellowthroat"
    for c in info.classes:
        assert c.official.startswith(f"{c.label + 1:03d}.")


def test_oxford_pets():
    info = get_dataset("oxford_pets")
    assert info.official_names()[:3] == ["Abyssinian", "american_bulldog", "american_pit_bull_terrier"]
    assert info.class_names()[:3] == ["abyssinian", "american bulldog", "american pit bull terrier"]
    assert info.classes[-1].official == "yorkshire_terrier"
    # the official list capitalises the cat breeds only
    cats = {o for o in info.official_names() if o[0].isupper()}
    assert {"Bengal", "British_Shorthair", "Maine_Coon", "Sphynx"} <= cats and len(cats) == 12


def test_flowers_food_dtd_aircraft():
    flowers = get_dataset("oxford_flowers")
    assert (flowers.classes[0].official, flowers.classes[0].name) == ("1", "pink primrose")
    assert (flowers.classes[101].official, flowers.classes[101].name) == ("102", "blackberry lily")
    assert flowers.official_names() == [str(i) for i in range(1, 103)]

    food = get_dataset("food101")
    assert (food.classes[0].official, food.classes[0].name) == ("apple_pie", "apple pie")
    assert food.official_names() == sorted(food.official_names())  # CoOp sorts the folders
    assert food.official_names().index("cheese_plate") + 1 == food.official_names().index("cheesecake")

    dtd = get_dataset("dtd")
    assert (dtd.classes[0].official, dtd.classes[0].name) == ("banded", "banded")
    assert "polka-dotted" in dtd.official_names()

    air = get_dataset("fgvc_aircraft")
    assert air.official_names()[0] == "707-320" and air.official_names()[-1] == "Yak-42"
    assert air.class_names() == air.official_names()


# -- folder matching --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_resolve_official_and_prompt_names(name):
    info = get_dataset(name)
    officials = [c.official for c in info.classes]
    assert list(resolve_class_names(officials, name).values()) == info.class_names()
    prompts = [c.name for c in info.classes]
    resolved = resolve_class_names(prompts, name)  # ImageNet repeats two names: a dict keeps one
    assert [resolved[p] for p in prompts] == info.class_names()


@pytest.mark.parametrize("name", ALL)
def test_resolve_respelled_folders(name):
    info = get_dataset(name)
    for c in info.classes:
        for variant in (
            c.official.upper(),
            c.name.replace(" ", "_").lower(),
            c.official.strip("/").replace("/", "_").replace(" ", "_"),
            f"{c.label:03d}_{c.name.replace(' ', '_')}",
        ):
            assert info.name_for_folder(variant) == c.name, (name, variant)


@pytest.mark.parametrize("name", ALL)
def test_match_keys_are_unambiguous(name):
    info = get_dataset(name)
    for c in info.classes:
        assert info.match_folder(c.official).name == c.name
        for alias in c.aliases:
            assert info.match_folder(alias).name == c.name


def test_resolve_typical_folders():
    assert resolve_class_names(["001.Black_footed_Albatross", "Black_footed_Albatross"], "cub") == {
        "001.Black_footed_Albatross": "Black footed Albatross",
        "Black_footed_Albatross": "Black footed Albatross",
    }
    assert resolve_class_names(["Abyssinian", "American Bulldog", "american_bulldog"], "oxford_pets") == {
        "Abyssinian": "abyssinian",
        "American Bulldog": "american bulldog",
        "american_bulldog": "american bulldog",
    }
    assert resolve_class_names(["Annual Crop", "annual_crop_land"], "eurosat") == {
        "Annual Crop": "Annual Crop Land",
        "annual_crop_land": "Annual Crop Land",
    }
    assert resolve_class_names(["apartment_building_outdoor", "a/apartment_building/outdoor"], "sun397") == {
        "apartment_building_outdoor": "outdoor apartment building",
        "a/apartment_building/outdoor": "outdoor apartment building",
    }
    assert resolve_class_names(["F-16A_B", "F_A-18"], "fgvc_aircraft") == {"F-16A_B": "F-16A/B", "F_A-18": "F/A-18"}
    assert resolve_class_names(["001", "colts_foot"], "oxford_flowers") == {"001": "pink primrose", "colts_foot": "colt's foot"}
    assert resolve_class_names(["n01440764"], "imagenet") == {"n01440764": "tench"}
    assert resolve_class_names(["AM General Hummer SUV 2000"], "Stanford-Cars") == {
        "AM General Hummer SUV 2000": "2000 AM General Hummer SUV"
    }


def test_resolve_without_dataset_uses_folder_names():
    assert resolve_class_names(["apple_pie", "my-class", "Faces_easy"], None) == {
        "apple_pie": "apple pie",
        "my-class": "my class",
        "Faces_easy": "Faces easy",
    }
    with pytest.raises(DataError):
        resolve_class_names(["___"], None)


def test_unmatched_folder_names_folder_and_dataset():
    with pytest.raises(DataError) as err:
        resolve_class_names(["AnnualCrop", "Glacier"], "eurosat")
    msg = str(err.value)
    assert "'Glacier'" in msg and "'eurosat'" in msg


def test_several_unmatched_folders_are_reported_together():
    with pytest.raises(DataError) as err:
        resolve_class_names(["zebra", "giraffe", "accordion"], "caltech101")
    msg = str(err.value)
    assert "'zebra'" in msg and "'giraffe'" in msg and "'caltech101'" in msg and "'accordion'" not in msg


def test_number_prefix_alone_is_not_a_class():
    with pytest.raises(DataError):
        get_dataset("oxford_flowers").name_for_folder("003_5")


# -- unknown datasets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, closest",
    [("eurosatt", "eurosat"), ("imagenet1k", "imagenet"), ("flowers", "oxford_flowers"), ("caltech", "caltech101")],
)
def test_unknown_dataset_suggests_closest(typo, closest):
    with pytest.raises(DataError, match=rf"did you mean '{closest}'"):
        get_dataset(typo)


def test_dataset_name_is_normalised():
    assert get_dataset("Oxford-Pets").name == "oxford_pets"
    assert get_dataset(" FGVC_Aircraft ").name == "fgvc_aircraft"
