"""Class prompts without an LLM: parsing and validation of answers (pure functions), the template
backend, the instruction, the cache and the prompts.json file."""

from __future__ import annotations

import json

import pytest

from synthshot.config import PromptsConfig
from synthshot.errors import ConfigError, DataError
from synthshot.prompts import PROMPTS_FILE, load_prompts, write_class_prompts
from synthshot.prompts.cache import PromptCache, cache_key
from synthshot.prompts.instruction import (
    DEFAULT_INSTRUCTION,
    asks_class_first,
    build_messages,
    instruction_template,
    render_instruction,
)
from synthshot.prompts.llm import backoff_delay, request_seed
from synthshot.prompts.parse import (
    check_prompt,
    clean_prompt,
    normalise,
    parse_response,
    select_prompts,
    split_candidates,
)
from synthshot.prompts.templates import GENERIC_TEMPLATES, dataset_templates, template_prompts

BOUNDS = {"min_chars": 12, "max_chars": 300}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cat, which has grey fur", "cat, which has grey fur"),
        ("1. cat, which has grey fur", "cat, which has grey fur"),
        ("12) cat, which has grey fur", "cat, which has grey fur"),
        ("(3) cat, which has grey fur", "cat, which has grey fur"),
        ("[4] cat, which has grey fur", "cat, which has grey fur"),
        ("#5 cat, which has grey fur", "cat, which has grey fur"),
        ("6: cat, which has grey fur", "cat, which has grey fur"),
        ("7 - cat, which has grey fur", "cat, which has grey fur"),
        ("Description 8: cat, which has grey fur", "cat, which has grey fur"),
        ("Prompt #9 - cat, which has grey fur", "cat, which has grey fur"),
        ("- cat, which has grey fur", "cat, which has grey fur"),
        ("* cat, which has grey fur", "cat, which has grey fur"),
        ("• cat, which has grey fur", "cat, which has grey fur"),
        ("  –  cat, which has grey fur  ", "cat, which has grey fur"),
        ("**cat**, which has *grey* fur", "cat, which has grey fur"),
        ("**1.** cat, which has grey fur", "cat, which has grey fur"),
        ("- **2. cat, which has grey fur**", "cat, which has grey fur"),
        ("> cat, which has grey fur", "cat, which has grey fur"),
        ("### cat, which has grey fur", "cat, which has grey fur"),
        ("`cat, which has grey fur`", "cat, which has grey fur"),
        ('"cat, which has grey fur"', "cat, which has grey fur"),
        ('"cat, which has grey fur",', "cat, which has grey fur"),
        ('1. "cat, which has grey fur".', "cat, which has grey fur"),
        ("“cat, which has grey fur”", "cat, which has grey fur"),
        ("'cat, which has grey fur'", "cat, which has grey fur"),
        ("cat,   which has\tgrey fur", "cat, which has grey fur"),
        # A number that belongs to the class name stays.
        ("737-200, which has two engines", "737-200, which has two engines"),
        ("1. 737-200, which has two engines", "737-200, which has two engines"),
        ("2012 BMW M3 coupe, which has a long hood", "2012 BMW M3 coupe, which has a long hood"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_clean_prompt_removes_list_and_markdown_decoration(raw, clean):
    assert clean_prompt(raw) == clean


def test_split_candidates_reads_lines_and_json_lists():
    assert split_candidates("a\n\n  \nb\n") == ["a", "b"]
    assert split_candidates('["a", "b"]') == ["a", "b"]
    assert split_candidates('```json\n["a", "b"]\n```') == ["a", "b"]
    assert split_candidates('Here they are:\n["a", "b"]\nEnjoy.') == ["a", "b"]
    assert split_candidates('{"descriptions": ["a", "b"]}') == ["a", "b"]
    assert split_candidates("```\na\nb\n```") == ["a", "b"]
    # Thinking before the answer is not part of it, closed or cut off.
    assert split_candidates("<think>plan\nmore</think>\na\nb") == ["a", "b"]
    assert split_candidates("a\n<think>never closed") == ["a"]
    # Brackets inside prose are not a list.
    assert split_candidates("cat, which has [grey] fur") == ["cat, which has [grey] fur"]


def test_check_prompt_reasons():
    assert check_prompt("cat, which has grey fur", "cat", **BOUNDS) is None
    assert check_prompt("Cat, which has grey fur", "cat", **BOUNDS) is None  # case
    assert check_prompt("annual crop land, which has rows", "Annual Crop Land", **BOUNDS) is None
    assert check_prompt("black-footed albatross, which has", "Black_footed Albatross", **BOUNDS) is None
    assert check_prompt("", "cat", **BOUNDS) == "empty"
    assert check_prompt("Here are ten descriptions of a cat:", "cat", **BOUNDS) == "a heading, not a description"
    assert check_prompt("cat, small", "cat", **BOUNDS) == "shorter than 12 characters"
    assert check_prompt("cat, which has " + "x" * 300, "cat", **BOUNDS) == "longer than 300 characters"
    assert check_prompt("dog, which has floppy ears", "cat", **BOUNDS) == "does not mention the class"
    # The LGCLIP form: the class name and a comma first (after at most an article), so prose fails.
    first = {"class_first": True, **BOUNDS}
    wrong = "not of the form '<class>, ...'"
    assert check_prompt("Tabby cat, which has stripes", "tabby cat", **first) is None
    assert check_prompt("A tabby cat, which has stripes", "tabby cat", **first) is None
    assert check_prompt("The tabby-cat , which has stripes", "tabby cat", **first) is None
    assert check_prompt("Black-footed Albatross, which has", "Black_footed_Albatross", **first) is None
    assert check_prompt("737-200, which has two engines", "737-200", **first) is None
    assert check_prompt("My tabby cat, which has stripes", "tabby cat", **first) == wrong
    assert check_prompt("A tabby cat is a domestic cat.", "tabby cat", **first) == wrong
    assert check_prompt("Tabby cats, which have stripes", "tabby cat", **first) == wrong
    assert check_prompt("Domestic tabby cat, which has", "tabby cat", **first) == wrong
    assert check_prompt("猫, which has soft fur", "猫", **first) is None
    assert check_prompt("犬, which has soft fur", "猫", **first) == "does not mention the class"
    # Bounds are inclusive.
    assert check_prompt("cat" + "x" * 9, "cat", min_chars=12, max_chars=12) is None


def test_normalise_compares_case_space_and_punctuation_free():
    assert normalise("  Cat,  which has GREY fur. ") == normalise("cat which has grey fur")
    assert normalise("737-200") == "737 200"


def test_select_prompts_deduplicates_keeps_order_and_stops_at_limit():
    candidates = [
        "1. cat, which has grey fur",
        "2. Cat, which has grey fur.",  # duplicate after normalising
        "3. dog, which has floppy ears",
        "4. cat, which has a long tail",
        "5. cat, which has green eyes",
        "6. cat, which has white paws",
    ]
    selection = select_prompts(candidates, "cat", **BOUNDS, keep=["cat, which has green eyes"], limit=3)
    assert selection.prompts == ["cat, which has green eyes", "cat, which has grey fur", "cat, which has a long tail"]
    assert selection.rejected == {"duplicate": 1, "does not mention the class": 1}
    assert selection.summary() == "1 duplicate, 1 does not mention the class"
    assert select_prompts([], "cat", **BOUNDS).summary() == "none"


def test_parse_response_of_a_typical_chat_answer():
    answer = (
        "Sure! Here are 4 visual descriptions of a tabby cat:\n\n"
        "1. **Tabby cat, which has** a striped coat seen from the side\n"
        "2. tabby cat, which has amber eyes in a close-up of its face\n"
        '3. "tabby cat, which has a curled tail, seen from behind"\n'
        "4. tabby cat, which has amber eyes in a close-up of its face\n"
        "\nI hope these help!"
    )
    selection = parse_response(answer, "tabby cat", **BOUNDS)
    assert selection.prompts == [
        "Tabby cat, which has a striped coat seen from the side",
        "tabby cat, which has amber eyes in a close-up of its face",
        "tabby cat, which has a curled tail, seen from behind",
    ]
    assert selection.rejected == {"a heading, not a description": 1, "duplicate": 1, "does not mention the class": 1}


def test_parse_response_drops_the_cut_off_last_line():
    answer = "cat, which has grey fur\ncat, which has a long tail\ncat, which has gre"
    assert len(parse_response(answer, "cat", **BOUNDS).prompts) == 3
    assert parse_response(answer, "cat", **BOUNDS, truncated=True).prompts == [
        "cat, which has grey fur",
        "cat, which has a long tail",
    ]


def test_prose_gives_no_prompt_in_the_lgclip_form():
    prose = (
        "The domestic cat is a small carnivorous mammal. It is the only domesticated species in the family "
        "Felidae and is often referred to as the house cat."
    )
    assert len(parse_response(prose, "cat", **BOUNDS).prompts) == 1  # it mentions the class...
    selection = parse_response(prose, "cat", **BOUNDS, class_first=True)  # ...but is no "cat, which has"
    assert selection.prompts == [] and selection.rejected == {"not of the form '<class>, ...'": 1}


def test_instruction_asks_for_the_lgclip_form():
    text = render_instruction(DEFAULT_INSTRUCTION, "tabby cat", 10)
    assert "Write 10 " in text
    assert '"tabby cat, which has ..."' in text
    assert "viewpoint" in text and "no numbering" in text
    assert "{" not in text
    assert render_instruction(DEFAULT_INSTRUCTION, "tabby cat", 3) == text.replace("Write 10 ", "Write 3 ")
    messages = build_messages(DEFAULT_INSTRUCTION, "cat", 2)
    assert [m["role"] for m in messages] == ["system", "user"]
    # A user's instruction may hold other braces.
    assert render_instruction("{name} {n} {json}", "cat", 2) == "cat 2 {json}"
    assert instruction_template(None) == DEFAULT_INSTRUCTION
    assert asks_class_first(DEFAULT_INSTRUCTION) and not asks_class_first("Write {n} captions of {name}.")
    with pytest.raises(ConfigError, match=r"prompts.instruction .* has no '\{name\}'"):
        instruction_template("Write {n} descriptions")


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(k, 0.5) for k in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(30, 1.0) == 60.0
    assert request_seed("cat", 0) == request_seed("cat", 0) != request_seed("cat", 1)


def test_template_prompts_cycle_to_exactly_n():
    assert template_prompts("cat", 3, ("a {}", "b {}")) == ["a cat", "b cat", "a cat"]
    assert template_prompts("cat", 1, ("a {}", "b {}")) == ["a cat"]
    assert dataset_templates(None) == GENERIC_TEMPLATES
    assert len(set(GENERIC_TEMPLATES)) == len(GENERIC_TEMPLATES) == 10


def test_template_backend_uses_the_registry(tmp_path):
    from synthshot.data.registry import get_dataset

    info = get_dataset("eurosat")
    lines = []
    settings = PromptsConfig(per_class=5)
    prompts = write_class_prompts(
        settings, {"AnnualCrop": "Annual Crop Land", "Forest": "Forest"}, tmp_path, dataset="eurosat", echo=lines.append
    )
    templates = list(dict.fromkeys((info.template, *info.zeroshot_templates)))
    assert len(templates) < 5  # so the templates cycle
    assert prompts["Forest"][0] == info.prompt("Forest")
    assert prompts["Forest"] == [templates[i % len(templates)].format("Forest") for i in range(5)]
    assert all(len(p) == 5 for p in prompts.values())
    assert json.loads((tmp_path / PROMPTS_FILE).read_text()) == prompts
    assert load_prompts(tmp_path / PROMPTS_FILE, classes=["AnnualCrop", "Forest"]) == prompts
    assert "2 classes" in lines[-1] and "eurosat" in lines[-1]
    assert not (tmp_path / "cache").exists()  # templates cost nothing: no cache


def test_template_backend_without_dataset_uses_generic_templates(tmp_path):
    prompts = write_class_prompts(PromptsConfig(per_class=12), {"c1": "red circle"}, tmp_path, echo=lambda _: None)
    assert prompts["c1"][:10] == [t.format("red circle") for t in GENERIC_TEMPLATES]
    assert prompts["c1"][10:] == prompts["c1"][:2]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({"cat": ""}, r"class 'cat' has an empty prompt name ''"),
        ({"cat": "   "}, r"class 'cat' has an empty prompt name"),
        ({"": "cat"}, r"class key '' is empty"),
        ({}, r"no classes to write prompts for"),
    ],
)
def test_empty_class_names_are_refused(tmp_path, names, message):
    for backend in ("template", "openai"):
        settings = PromptsConfig(backend=backend, model="m", base_url="http://127.0.0.1:9/v1")
        with pytest.raises(DataError, match=message):
            write_class_prompts(settings, names, tmp_path, echo=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no_such_dataset"):
        write_class_prompts(PromptsConfig(), {"cat": "cat"}, tmp_path, dataset="no_such_dataset", echo=lambda _: None)


def test_cache_round_trip_and_keys(tmp_path):
    cache = PromptCache(tmp_path)
    key = cache_key("openai", "m", "tabby cat", DEFAULT_INSTRUCTION, 10)
    assert cache.get(key) == []
    path = cache.put(key, ["tabby cat, which has stripes"], complete=False)
    assert path.parent == tmp_path and path.name.startswith("tabby_cat-")
    assert cache.get(key) == ["tabby cat, which has stripes"]
    assert json.loads(path.read_text())["complete"] is False
    # Every part of the key separates entries.
    for other in (
        cache_key("transformers", "m", "tabby cat", DEFAULT_INSTRUCTION, 10),
        cache_key("openai", "m2", "tabby cat", DEFAULT_INSTRUCTION, 10),
        cache_key("openai", "m", "cat", DEFAULT_INSTRUCTION, 10),
        cache_key("openai", "m", "tabby cat", DEFAULT_INSTRUCTION + " ", 10),
        cache_key("openai", "m", "tabby cat", DEFAULT_INSTRUCTION, 11),
    ):
        assert cache.path(other) != path and cache.get(other) == []
    # A damaged or foreign file is ignored (asked again), not trusted.
    path.write_text("{not json")
    assert cache.get(key) == []
    path.write_text(json.dumps({"key": cache_key("openai", "x", "tabby cat", "i", 1), "prompts": ["p"]}))
    assert cache.get(key) == []
    path.write_text("[1, 2]")
    assert cache.get(key) == []
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"prompts file .*prompts.json does not exist: run `synthshot prompts` first"),
        ("{broken", r"prompts file .* is not valid JSON \(.* at line 1\)"),
        ("[]", r"must map each class to a list of prompts, got a JSON list"),
        ("{}", r"must map each class to a list of prompts, got an empty mapping"),
        ('{"cat": "a photo of a cat"}', r"class 'cat' must have a non-empty list of non-empty prompt strings"),
        ('{"cat": []}', r"class 'cat' must have a non-empty list"),
        ('{"cat": ["ok", ""]}', r"class 'cat' must have a non-empty list of non-empty prompt strings"),
        ('{"cat": ["ok", 3]}', r"class 'cat' must have"),
        ('{" ": ["ok"]}', r"has an empty class name"),
    ],
)
def test_load_prompts_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / PROMPTS_FILE
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_load_prompts_names_missing_classes(tmp_path):
    path = tmp_path / PROMPTS_FILE
    path.write_text('{"cat": ["a photo of a cat"]}')
    assert load_prompts(path) == {"cat": ["a photo of a cat"]}
    with pytest.raises(DataError, match=r"has no prompts for 1 classes \('dog'\)"):
        load_prompts(path, classes=["cat", "dog"])
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="is not UTF-8"):
        load_prompts(path)
