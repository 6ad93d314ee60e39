"""Small local models (llama.cpp's server with Qwen2.5-0.5B, SmolLM2-135M) behind the `openai`
backend, played by fake models on the loopback chat server of test_prompts_openai: a model that
copies listed prompts back, one whose answers are cut off, near-duplicates, loose forms, a
single-quoted instruction, runs that need fewer prompts than asked, prompts longer than the text
encoder reads, and servers whose context is too small or that answer too slowly."""

from __future__ import annotations

import json
import logging

import pytest
from test_prompts_openai import (  # noqa: F401  (fixtures)
    KEY_ENV,
    TIMEOUT,
    VIEWS,
    ChatServer,
    answer,
    api_key,
    asked,
    chat_body,
    described,
    run,
    server,
    settings_for,
    status,
)

from synthshot.errors import ModelError
from synthshot.prompts import PROMPTS_FILE, load_prompts, write_class_prompts
from synthshot.prompts import instruction as instr
from synthshot.prompts.instruction import asks_class_first
from synthshot.prompts.llm import request_seed
from synthshot.prompts.parse import check_prompt, clean_prompt, select_prompts

BOUNDS = {"min_chars": 12, "max_chars": 300}
COLOURS = ["grey", "white", "black", "ginger", "cream", "brown", "silver", "golden"]
PARTS = ["long ears", "a short tail", "green eyes", "white paws", "a striped back", "a round face", "a thick collar",
         "a spotted belly"]
# LGCLIP's instruction as its authors wrote it: the form in single quotes.
SINGLE_QUOTED = (
    "Generate {n} different visual descriptions of '{name}'. Each one must follow the format "
    "'{name}, which has ...', describing its visual features from a different angle, one per line."
)


def seeded_line(name: str, seed: int) -> str:
    """What a sampling model writes with this seed: the same line for the same seed."""
    return (
        f"{name}, which has {COLOURS[seed % 8]} fur and {PARTS[(seed // 8) % 8]}, "
        f"seen from the {VIEWS[(seed // 64) % len(VIEWS)]}"
    )


def listed(request: dict) -> list[str]:
    """The prompts a request lists as already written (after its 'already written' line)."""
    lines = request["messages"][-1]["content"].splitlines()
    for i, line in enumerate(lines):
        if "already written" in line:
            return lines[i + 1 :]
    return []


def copier(request: dict, server: ChatServer):
    """A weak model: shown prompts, it copies them back; asked afresh, it writes one valid line
    (chosen by the seed, as a server that honours `seed` would) and some chatter."""
    name, _ = asked(request)
    copied = listed(request)
    if copied:
        return 200, chat_body("\n".join(copied)), 0.0
    return 200, chat_body(seeded_line(name, request.get("seed", 0)) + "\nI hope these descriptions help you!"), 0.0


def user_texts(server: ChatServer) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in server.requests]


# --- 1. re-asks list no kept prompt, vary the seed and the temperature --------------------------------


def test_a_model_that_copies_listed_prompts_still_finishes(server, api_key, tmp_path):
    server.default = copier
    prompts, _, _ = run(settings_for(server.url, per_class=4, max_retries=5), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == [seeded_line("cat", request_seed("cat", k)) for k in range(4)]
    assert len(server.requests) == 4
    assert not any("already written" in text for text in user_texts(server))  # nothing to copy
    assert [text.split(" different")[0] for text in user_texts(server)] == ["Write 4", "Write 3", "Write 2", "Write 1"]
    seeds = [r["body"]["seed"] for r in server.requests]
    assert len(set(seeds)) == 4
    temperatures = [r["body"]["temperature"] for r in server.requests]
    assert temperatures[0] == 0.5 and temperatures == sorted(temperatures) and temperatures[-1] > 0.5


def test_a_rerun_asks_with_new_seeds_and_finishes(server, api_key, tmp_path):
    server.default = copier
    with pytest.raises(ModelError, match=r"only 1 of 3 valid prompts after 1 requests"):
        run(settings_for(server.url, per_class=3, max_retries=0), {"cat": "cat"}, tmp_path)
    first = [r["body"]["seed"] for r in server.requests]
    # The rerun goes on from the requests the cache records: no seed (and no answer) is repeated.
    prompts, _, _ = run(settings_for(server.url, per_class=3, max_retries=1), {"cat": "cat"}, tmp_path)
    seeds = [r["body"]["seed"] for r in server.requests]
    assert seeds == [request_seed("cat", k) for k in range(3)] and first == seeds[:1]
    assert prompts["cat"] == [seeded_line("cat", s) for s in seeds]


# --- 2. the seed is sent and recorded -----------------------------------------------------------------


def test_the_seed_is_sent_and_recorded_in_the_cache(server, api_key, tmp_path):
    server.script = [answer("\n".join(described("cat", 100, 2)))]
    run(settings_for(server.url, per_class=4), {"cat": "cat"}, tmp_path)
    seeds = [r["body"]["seed"] for r in server.requests]
    assert seeds == [request_seed("cat", 0), request_seed("cat", 1)]
    (entry,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert entry["seeds"] == seeds and entry["complete"] is True


# --- 3. cut-off answers are counted and named ---------------------------------------------------------


def test_answers_cut_off_by_the_token_limit_are_reported(server, api_key, tmp_path):
    cut_off = "Here are four descriptions of a cat:\ncat, which has a clear outline seen from the fr"
    server.default = answer(cut_off, "length")
    with pytest.raises(ModelError) as error:
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert "3 cut off at prompts.max_new_tokens" in message
    assert "raise prompts.max_new_tokens (now 256)" in message and "\n" not in message


# --- 4. near-duplicates -------------------------------------------------------------------------------


def test_near_duplicates_are_dropped(server, api_key, tmp_path):
    shore = "cat, which has a grey coat and green eyes. It's on the shore, seen from the side"
    lines = [
        shore,
        shore.replace("on the shore", "in the shore"),  # near-duplicate
        "CAT, which has a grey coat and green eyes; it's on the shore -- seen from the side!",  # duplicate
    ]
    server.script = [answer("\n".join(lines + described("cat", 50, 1)))]
    prompts, _, _ = run(settings_for(server.url, per_class=3), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == [shore, described("cat", 50, 1)[0], described("cat", 0, 1)[0]]
    assert len(server.requests) == 2


def test_near_duplicate_threshold():
    kept = ["cat, which has a grey coat and green eyes, seen from the front"]
    views = ["cat, which has a grey coat and green eyes, seen from the side"]  # another view: kept
    near = ["Cat, which has a grey coat and green eyes -- seen from the fronts"]
    selection = select_prompts(views + near, "cat", **BOUNDS, keep=kept)
    assert selection.prompts == kept + views and selection.rejected == {"near-duplicate": 1}
    # near_duplicate=1 removes exact (normalised) repeats only.
    assert select_prompts(near, "cat", **BOUNDS, keep=kept, near_duplicate=1.0).prompts == kept + near


# --- 5. the form check: brackets, "which has", the real reason, aliases -------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[abyssinian, which has a ruddy coat",
        "[abyssinian, which has a ruddy coat]",
        "(abyssinian, which has a ruddy coat)",
        "3. [abyssinian, which has a ruddy coat],",
        "- {abyssinian, which has a ruddy coat}",
        "'abyssinian, which has a ruddy coat",
    ],
)
def test_leading_markers_and_brackets_are_stripped(raw):
    assert clean_prompt(raw) == "abyssinian, which has a ruddy coat"


def test_the_form_is_the_one_the_instruction_asks_for():
    form = instr.class_form('Each of the form "{name}, which has ...".')
    assert form == ", which has"
    ok = {"class_first": form, **BOUNDS}
    assert check_prompt("abyssinian, which has a ruddy coat", "abyssinian", **ok) is None
    assert check_prompt("An Abyssinian , which  has a ruddy coat", "abyssinian", **ok) is None
    assert check_prompt("Residential Buildings, which have red roofs", "Residential Buildings", **ok) is None
    assert check_prompt("abyssinian, which is a cat", "abyssinian", **ok) == "not of the form '<class>, which has ...'"
    # Prose is not of the form, however long: that is the reason given.
    prose = "The abyssinian is a breed of cat " + "with a ticked coat " * 20
    assert check_prompt(prose, "abyssinian", **ok) == "not of the form '<class>, which has ...'"
    assert check_prompt("abyssinian, which has " + "x" * 300, "abyssinian", **ok) == "longer than 300 characters"


def test_a_class_may_be_named_by_its_aliases(server, api_key, tmp_path):
    names = {"Highway": "Highway or Road", "SeaLake": "Sea or Lake", "AnnualCrop": "Annual Crop Land"}
    answers = {
        "Highway or Road": ["Highway, which has two grey lanes seen from above",
                            "Road, which has a white line seen from above"],
        "Sea or Lake": ["Lake, which has calm blue water seen from above",
                        "sea, which has waves and a shore seen from above"],
        "Annual Crop Land": ["AnnualCrop, which has striped fields seen from above",
                             "annual crop land, which has brown rows seen from above"],
    }
    server.default = lambda request, server: (200, chat_body("\n".join(answers[asked(request)[0]])), 0.0)
    prompts, _, _ = run(settings_for(server.url, per_class=2), names, tmp_path, dataset="eurosat")
    assert prompts["Highway"] == answers["Highway or Road"]
    assert prompts["SeaLake"][0].startswith("Lake, which has")
    assert prompts["AnnualCrop"][0].startswith("AnnualCrop, which has")
    assert len(server.requests) == 3
    # The aliases: the registry's published name, and the parts of an "X or Y" name even without a dataset.
    from synthshot.prompts.class_prompts import class_aliases

    assert class_aliases("Highway", "Highway or Road", None) == ("Highway", "Road")
    assert class_aliases("Highway", "Highway or Road", "eurosat") == ("Highway", "Road")
    assert class_aliases("AnnualCrop", "Annual Crop Land", "eurosat") == ("AnnualCrop", "Annual Crop")
    assert class_aliases("001.Black_footed_Albatross", "Black footed Albatross", "cub") == ()
    assert class_aliases("n04209133", "military hat (bearskin or shako)", None) == ()
    assert class_aliases("cat", "cat", None) == ()
    road = ("Road, which has a white line", "Highway or Road")
    assert check_prompt(*road, **BOUNDS, class_first=True) == "does not mention the class"
    assert check_prompt(*road, aliases=("Road",), **BOUNDS, class_first=True) is None


# --- 6. the instruction's form in any quotes ----------------------------------------------------------


@pytest.mark.parametrize(
    "instruction",
    [
        SINGLE_QUOTED,
        "Write {n} descriptions of {name}, each of the form \u2018{name}, which has ...\u2019, one per line.",
        "Write {n} descriptions of {name}, each of the form \u201c{name}, which has ...\u201d, one per line.",
        "Write {n} descriptions of {name}, each of the form {name}, which has ... (one per line).",
    ],
    ids=["single", "curly-single", "curly-double", "unquoted"],
)
def test_the_form_is_recognised_in_any_quotes(instruction):
    assert asks_class_first(instruction) and instr.class_form(instruction) == ", which has"


def test_not_a_form():
    for instruction in ("Write {n} captions of {name}.", "Captions of '{name}'.", "Describe {name}, then {n} more."):
        assert not asks_class_first(instruction) and instr.class_form(instruction) is None


def test_a_single_quoted_instruction_keeps_the_form_check(server, api_key, tmp_path):
    prose = "A cat is a small domestic animal that many people keep as a pet."
    server.default = answer("\n".join([prose] * 4))
    with pytest.raises(ModelError, match=r"rejected: 4 not of the form '<class>, which has \.\.\.'"):
        run(settings_for(server.url, instruction=SINGLE_QUOTED, max_retries=0), {"cat": "cat"}, tmp_path)


# --- 7. demand only what is used ----------------------------------------------------------------------


def one_good_line(request, server):
    name, _ = asked(request)
    server.served += 1
    return 200, chat_body(described(name, server.served, 1)[0] + "\nSorry, that is all I can think of."), 0.0


def test_fewer_prompts_than_asked_are_accepted_with_a_warning(server, api_key, tmp_path, caplog):
    server.default = one_good_line
    settings = settings_for(server.url, per_class=4, min_per_class=2, max_retries=1)
    with caplog.at_level(logging.WARNING, logger="synthshot.prompts"):
        prompts, _, _ = run(settings, {"cat": "cat", "dog": "dog"}, tmp_path)
    assert [len(p) for p in prompts.values()] == [2, 2]
    assert load_prompts(tmp_path / PROMPTS_FILE) == prompts
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "class 'cat': 2 of 4 prompts after 2 requests" in warnings[0] and "prompts.min_per_class" in warnings[0]
    # Below min_per_class it is still an error.
    server.default = answer("Sorry, I cannot help with that.")
    with pytest.raises(ModelError, match=r"only 0 of 4 valid prompts .*prompts.min_per_class \(2\)"):
        run(settings, {"bird": "bird"}, tmp_path)


def test_prompt_cycle_first_needs_one_prompt_per_class(server, api_key, tmp_path, tiny_kit, caplog):
    """The LGCLIP preset draws only each class's first prompt: a weak model that writes one valid
    prompt per answer finishes the run, and a prompt the text encoder cuts is reported once."""
    from synthshot.config import load_config
    from synthshot.runs import run as run_config

    def weak(request, server):
        name, _ = asked(request)
        first = f"{name}, which has " + " and ".join(f"a {c} edge" for c in COLOURS)  # over 77 tiny-kit tokens
        return 200, chat_body(first + "\nThat is all."), 0.0

    server.default = weak
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={tiny_kit}", "stages=[data, prompts, generate]",
        "data.demo.classes=2", "data.demo.images_per_class=2", "data.demo.size=32", "data.shots=1",
        "prompts.backend=openai", "prompts.model=test-model", f"prompts.base_url={server.url}",
        f"prompts.api_key_env={KEY_ENV}", "prompts.per_class=10", "prompts.max_retries=1", f"prompts.timeout={TIMEOUT}",
        "generation.mode=text", "generation.prompt_cycle=first", "generation.images_per_class=1",
        "generation.steps=1", "generation.height=32", "generation.width=32", "generation.precision=fp32",
    ]
    with caplog.at_level(logging.WARNING):
        run_config(load_config(None, overrides), echo=lambda *_: None)
    prompts = load_prompts(tmp_path / "out" / "prompts" / PROMPTS_FILE)
    assert sorted(prompts) == ["circle", "square"] and all(len(p) == 1 for p in prompts.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    cut = [w for w in warnings if "tokens the text encoder reads" in w]
    assert len(cut) == 2 and all("1 of 1 prompts" in w for w in cut), warnings
    assert any("class 'circle': 1 of 10 prompts" in w for w in warnings)


# --- 8. prompts longer than the text encoder reads ----------------------------------------------------


def test_max_tokens_rejects_prompts_the_text_encoder_would_cut(server, api_key, tmp_path, tiny_kit):
    short = described("cat", 0, 3)
    long = "cat, which has " + ", ".join(f"a {c} stripe" for c in COLOURS)
    server.script = [answer("\n".join([long] + short))]
    settings = settings_for(server.url, per_class=3, max_tokens=77)
    prompts, _, _ = run(settings, {"cat": "cat"}, tmp_path, diffusion=str(tiny_kit / "stable-diffusion"))
    assert prompts["cat"] == short
    server.default = answer(long)
    with pytest.raises(ModelError, match=r"rejected: 3 longer than 77 tokens.*prompts.max_tokens"):
        run(settings, {"dog": "cat"}, tmp_path / "again", diffusion=str(tiny_kit / "stable-diffusion"))


def test_generation_warns_once_per_class_about_prompts_the_text_encoder_cuts(tmp_path, tiny_kit, caplog):
    from synthshot.config import load_config
    from synthshot.runs import run as run_config

    long = "which has " + " and ".join(f"a {c} edge" for c in COLOURS)  # over 77 tiny-kit tokens
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({
        "circle": [f"circle, {long}", "circle, which has a round edge", f"circle, {long} too"],
        "square": ["square, which has four corners", "square, which has a flat side", f"square, {long}"],
    }))
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={tiny_kit}", "stages=[data, generate]",
        "data.demo.classes=2", "data.demo.images_per_class=2", "data.demo.size=32", "data.shots=1",
        f"generation.prompts_file={prompts_file}", "generation.mode=text", "generation.images_per_class=2",
        "generation.steps=1", "generation.height=32", "generation.width=32", "generation.precision=fp32",
    ]
    with caplog.at_level(logging.WARNING):
        run_config(load_config(None, overrides), echo=lambda *_: None)
    cut = [r.getMessage() for r in caplog.records if "tokens the text encoder reads" in r.getMessage()]
    # Two images per class draw the first two prompts: one of circle's is cut, none of square's.
    assert len(cut) == 1 and cut[0].startswith("class 'circle': 1 of 2 prompts are longer than the 77 tokens")
    assert "prompts.max_tokens: 77" in cut[0]


# --- 9. slow servers and small contexts ---------------------------------------------------------------

LLAMA_CPP_CONTEXT = json.dumps(
    {"error": {"code": 500, "message": "the request exceeds the available context size, try increasing it",
               "type": "exceed_context_size_error"}}
).encode()
VLLM_CONTEXT = json.dumps(
    {"object": "error", "message": "This model's maximum context length is 2048 tokens. However, you requested "
     "2300 tokens (300 in the messages, 2000 in the completion).", "type": "BadRequestError", "code": 400}
).encode()


@pytest.mark.parametrize(
    ("code", "body", "server_flag"),
    [(500, LLAMA_CPP_CONTEXT, "--ctx-size"), (400, VLLM_CONTEXT, "--max-model-len")],
    ids=["llama.cpp", "vllm"],
)
def test_a_context_too_small_is_not_retried_and_says_what_to_raise(server, api_key, tmp_path, code, body, server_flag):
    server.default = status(code, body)
    with pytest.raises(ModelError) as error:
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert len(server.requests) == 1
    assert "context" in message and server_flag in message
    assert "prompts.max_new_tokens" in message and "prompts.per_request" in message and "\n" not in message


def test_an_ordinary_server_error_is_still_retried(server, api_key, tmp_path):
    server.script = [status(500, b'{"error": {"message": "slot unavailable"}}')]
    prompts, sleeps, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert len(prompts["cat"]) == 4 and len(server.requests) == 2


def test_a_server_too_slow_says_what_to_change(server, api_key, tmp_path):
    server.default = answer("\n".join(described("cat", 0, 4)), delay=TIMEOUT * 2)
    with pytest.raises(ModelError) as error:
        run(settings_for(server.url, max_retries=1), {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert f"no answer within {TIMEOUT:g} s" in message
    assert "raise prompts.timeout" in message and "prompts.per_request" in message and "\n" not in message


def test_per_request_caps_each_request(server, api_key, tmp_path):
    prompts, _, _ = run(settings_for(server.url, per_class=5, per_request=2, max_retries=2), {"cat": "cat"}, tmp_path)
    assert [text.split(" different")[0] for text in user_texts(server)] == ["Write 2", "Write 2", "Write 1"]
    assert prompts["cat"] == described("cat", 0, 5)


def test_write_class_prompts_without_a_diffusion_model_cannot_count_tokens(tmp_path):
    settings = settings_for("http://127.0.0.1:9/v1", max_tokens=77)
    with pytest.raises(Exception, match=r"prompts.max_tokens"):
        write_class_prompts(settings, {"cat": "cat"}, tmp_path, echo=lambda _: None)
