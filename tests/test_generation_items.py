"""The generation work plan: stable seeds, per-item determinism, negative sampling, sharding."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from synthshot.errors import ConfigError, DataError
from synthshot.generation.items import (
    WorkItem,
    item_augment_seed,
    item_noise_seed,
    item_seed,
    parse_shard,
    plan_items,
    shard_items,
)

SPLIT = {
    "cat": ["cat/0.jpg", "cat/1.jpg", "cat/2.jpg"],
    "dog": ["dog/0.jpg", "dog/1.jpg"],
    "Golden Retriever": ["gr/0.jpg", "gr/1.jpg", "gr/2.jpg", "gr/3.jpg"],
}
PROMPTS = {name: f"a photo of a {name}" for name in [*SPLIT, "bird"]}
PROBS = {
    "cat": {"dog": 0.7, "Golden Retriever": 0.3},
    "dog": {"cat": 0.2, "Golden Retriever": 0.8},
    "Golden Retriever": {"cat": 0.5, "dog": 0.5},
}


def plan(split=SPLIT, n=4, mode="dual", probs=PROBS, seed=0, prompts=PROMPTS):
    return plan_items(split, images_per_class=n, base_seed=seed, prompts=prompts, mode=mode, negative_probs=probs)


def test_item_seed_is_sha256_of_base_class_index():
    # Hard-coded once: a change in the derivation changes every generated image and must fail here.
    assert item_seed(0, "cat", 0) == 6522581578836825860
    assert item_seed(0, "cat", 1) == 3956315631248324687
    assert item_seed(7, "golden retriever", 123) == 4724474495167136939
    assert item_seed(0, "cat", 0) == int.from_bytes(hashlib.sha256(b"0:cat:0").digest()[:8], "big") >> 1
    assert 0 <= item_seed(2**40, "x" * 100, 10**6) < 2**63


def test_sub_seeds_are_stable_and_distinct():
    item = plan(n=1)[0]
    assert item.seed == item_seed(0, "Golden Retriever", 0)
    assert len({item.seed, item_noise_seed(item), item_augment_seed(item)}) == 3
    fixed = WorkItem("a", "a", "a", 0, 0, 6522581578836825860, "p", None, None, None)
    assert item_noise_seed(fixed) == 7025022249152764062
    assert item_augment_seed(fixed) == 7778891266522183126


def test_plan_is_deterministic_and_ordered():
    items = plan()
    assert items == plan()
    assert [item.class_name for item in items[::4]] == ["Golden Retriever", "cat", "dog"]
    assert items[0].id == "golden_retriever-00000" and items[0].class_slug == "golden_retriever"
    assert [(item.label, item.index) for item in items[4:8]] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert all(item.positive_file in SPLIT[item.class_name] for item in items)
    assert all(item.negative_file in SPLIT[item.negative_class] for item in items)
    assert all(item.prompt == PROMPTS[item.class_name] for item in items)
    assert plan(seed=1) != items


def test_items_do_not_depend_on_images_per_class_or_other_classes():
    small, large = plan(n=5), plan(n=10)
    for name in SPLIT:
        assert [i for i in large if i.class_name == name][:5] == [i for i in small if i.class_name == name]

    # Adding a class shifts labels only; every drawn field of the old classes' items stays.
    wider_split = {**SPLIT, "bird": ["bird/0.jpg"]}
    wider = plan(split=wider_split, mode="single", probs=None)
    by_id = {item.id: item for item in wider}
    for item in plan(mode="single", probs=None):
        other = by_id[item.id]
        assert (other.seed, other.positive_file, other.prompt) == (item.seed, item.positive_file, item.prompt)


def test_positive_file_is_shared_by_single_and_dual_modes():
    dual, single = plan(mode="dual"), plan(mode="single")
    assert [i.positive_file for i in dual] == [i.positive_file for i in single]


def test_negative_class_is_never_the_class_itself():
    items = plan(n=200, probs=None)
    assert all(item.negative_class != item.class_name for item in items)


def test_negative_frequencies_follow_the_probabilities():
    items = [item for item in plan(n=3000) if item.class_name == "cat"]
    counts = Counter(item.negative_class for item in items)
    assert abs(counts["dog"] / len(items) - 0.7) < 0.03
    assert abs(counts["Golden Retriever"] / len(items) - 0.3) < 0.03
    files = Counter(item.negative_file for item in items if item.negative_class == "dog")
    assert all(abs(count / sum(files.values()) - 0.5) < 0.05 for count in files.values())


def test_zero_probability_class_is_never_drawn():
    probs = {**PROBS, "cat": {"dog": 1.0, "Golden Retriever": 0.0, "cat": 0.0}}
    assert {item.negative_class for item in plan(n=300, probs=probs) if item.class_name == "cat"} == {"dog"}


def test_uniform_probabilities():
    uniform = {a: {b: 0.5 for b in SPLIT if b != a} for a in SPLIT}
    items = plan(n=2000, probs=uniform)
    assert items == plan(n=2000, probs=None)  # None means uniform over the other classes
    for name in SPLIT:
        counts = Counter(item.negative_class for item in items if item.class_name == name)
        assert set(counts) == set(SPLIT) - {name}
        assert all(abs(count / 2000 - 0.5) < 0.04 for count in counts.values())


@pytest.mark.parametrize("mode", ["single", "text"])
def test_single_and_text_modes_leave_negative_fields_empty(mode):
    items = plan(mode=mode, probs=None)
    assert all(item.negative_class is None and item.negative_file is None for item in items)
    assert all((item.positive_file is None) == (mode == "text") for item in items)


def test_text_mode_accepts_classes_without_images():
    items = plan(split={"cat": [], "bird": []}, mode="text", probs=None, n=2)
    assert [item.id for item in items] == ["bird-00000", "bird-00001", "cat-00000", "cat-00001"]


def test_record_round_trip():
    for item in plan(n=2):
        assert WorkItem.from_record({**item.to_record(), "file": "x.png", "steps": 50}) == item
    with pytest.raises(DataError, match="seed"):
        WorkItem.from_record({k: v for k, v in plan(n=1)[0].to_record().items() if k != "seed"})


@pytest.mark.parametrize("mode", ["dual", "single"])
def test_class_without_images_is_an_error(mode):
    with pytest.raises(DataError, match="'dog' has no few-shot images"):
        plan(split={**SPLIT, "dog": []}, mode=mode)


def test_dual_mode_with_one_class_is_an_error():
    with pytest.raises(DataError, match="no other class to draw a negative from: use generation.mode=single"):
        plan(split={"cat": SPLIT["cat"]}, probs=None)


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ({"cat": PROBS["cat"], "dog": PROBS["dog"]}, "no row for class 'Golden Retriever'"),
        ({**PROBS, "dog": {"cat": 0.5, "Golden Retriever": 0.4}}, "'dog' sum to 0.9"),
        ({**PROBS, "dog": {"cat": 1.2, "Golden Retriever": -0.2}}, "finite and >= 0"),
        ({**PROBS, "dog": {"cat": 0.5, "dog": 0.5}}, "its own negative"),
        ({**PROBS, "dog": {"cat": 0.5, "bird": 0.5}}, "unknown classes \\['bird'\\]"),
    ],
)
def test_bad_probabilities_are_errors(probs, message):
    with pytest.raises(DataError, match=message):
        plan(probs=probs)


def test_other_plan_errors():
    with pytest.raises(DataError, match="both become the folder name 'cat'"):
        plan(split={"cat": ["a"], "Cat": ["b"]}, mode="single", prompts={"cat": "x", "Cat": "y"})
    with pytest.raises(DataError, match="no prompt"):
        plan(prompts={"cat": "x"})
    with pytest.raises(ConfigError, match="mode"):
        plan(mode="triple")
    with pytest.raises(ConfigError, match="images_per_class"):
        plan(n=0)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shards_cover_every_item_once(count):
    items = plan(n=5)
    shards = [shard_items(items, index, count) for index in range(count)]
    assert sorted(item.id for shard in shards for item in shard) == sorted(item.id for item in items)
    assert sum(len(shard) for shard in shards) == len(items)
    assert shards[0][0] == items[0] and (count == 1 or shards[1][0] == items[1])


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3/4 ") == (3, 4)
    for bad in ["", "1", "a/b", "1/2/3", "2/2", "-1/2", "0/0"]:
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="0 <= i < n"):
        shard_items([], 2, 2)


def test_prompt_lists_cycle_by_index_and_empty_lists_fail():
    prompts = {name: [f"{name} one", f"{name} two", f"{name} three"] for name in SPLIT}
    items = plan(prompts=prompts, n=5, mode="text", probs=None)
    first = [item.prompt for item in items if item.class_name == items[0].class_name]
    assert first == [f"{items[0].class_name} {w}" for w in ("one", "two", "three", "one", "two")]
    with pytest.raises(DataError, match="empty"):
        plan(prompts={**prompts, items[0].class_name: []}, mode="text", probs=None)
