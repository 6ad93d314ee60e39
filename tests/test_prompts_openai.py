"""The `openai` prompts backend against a real HTTP server on loopback that speaks the OpenAI
chat-completions protocol: good answers, failures (500, timeout, malformed JSON, 401, 404,
unreachable, redirects), prose, too few prompts, the cache, and the API key: sent to the endpoint
only, kept out of every file and message, and never accepted in place of its variable's name."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthshot.config import PromptsConfig, load_config
from synthshot.errors import ConfigError, ModelError
from synthshot.prompts import PROMPTS_FILE, load_prompts, write_class_prompts
from synthshot.prompts.backends import make_backend
from synthshot.prompts.openai_chat import OpenAIChatBackend, chat_url

KEY_ENV = "SYNTHSHOT_TEST_LLM_KEY"
SECRET = "sk-test-0123456789-very-secret"
TIMEOUT = 0.2  # seconds per request; the "slow" answer takes longer
VIEWS = ["front", "side", "back", "above", "below", "far away", "close up", "left", "right", "behind", "a distance",
         "a corner"]
SCENES = ["a lawn", "a sofa", "fresh snow", "a beach", "a road", "a kitchen", "a forest"]


def described(name: str, start: int, count: int) -> list[str]:
    """Valid prompts, no two of them near-duplicates for i < 84 (the view and the scene cycle)."""
    return [
        f"{name}, which has a clear outline seen from the {VIEWS[i % len(VIEWS)]} on {SCENES[i % len(SCENES)]} ({i})"
        for i in range(start, start + count)
    ]


def chat_body(content: str | None, finish_reason: str = "stop") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
        }
    ).encode()


def asked(request: dict) -> tuple[str, int]:
    """The class and the number of prompts a request asks for (from the default instruction)."""
    user = request["messages"][-1]["content"]
    match = re.match(r"Write (\d+) different visual descriptions of (.+?) for a text-to-image model", user)
    return match.group(2), int(match.group(1))


def good(request: dict, server: ChatServer) -> tuple[int, bytes, float]:
    """An obedient LLM: the asked number of new, numbered, valid descriptions."""
    name, n = asked(request)
    lines = described(name, server.served, n)
    server.served += n
    return 200, chat_body("\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines))), 0.0


def status(code: int, body: bytes = b'{"error": {"message": "boom"}}'):
    return lambda request, server: (code, body, 0.0)


def answer(content: str | None, finish_reason: str = "stop", delay: float = 0.0):
    return lambda request, server: (200, chat_body(content, finish_reason), delay)


class ChatServer(ThreadingHTTPServer):
    """Loopback chat-completions server answering from a script, then with `default`."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.script: list = []
        self.default = good
        self.requests: list[dict] = []
        self.served = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        server: ChatServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        reply = server.script.pop(0) if server.script else server.default
        code, payload, delay = reply(body, server)
        time.sleep(delay)
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up waiting
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    chat = ChatServer()
    thread = threading.Thread(target=chat.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield chat
    chat.shutdown()
    chat.server_close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def settings_for(url: str, **changes) -> PromptsConfig:
    values = {
        "backend": "openai",
        "model": "test-model",
        "base_url": url,
        "api_key_env": KEY_ENV,
        "per_class": 4,
        "timeout": TIMEOUT,
        "max_retries": 2,
        "temperature": 0.5,
        "max_new_tokens": 256,
    }
    return PromptsConfig(**{**values, **changes})


class Recorder:
    """Stands in for time.sleep (the back-off) and for print (the progress lines)."""

    def __init__(self):
        self.items = []

    def __call__(self, item):
        self.items.append(item)


def run(settings, names, out_dir, **kwargs):
    sleeps, lines = Recorder(), Recorder()
    prompts = write_class_prompts(settings, names, out_dir, echo=lines, sleep=sleeps, backoff=0.01, **kwargs)
    return prompts, sleeps.items, lines.items


def files_under(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


def test_prompts_from_an_endpoint_are_written_cached_and_never_hold_the_key(server, api_key, tmp_path, capsys):
    names = {"tabby": "tabby cat", "beagle": "beagle"}
    prompts, sleeps, lines = run(settings_for(server.url), names, tmp_path / "prompts")

    assert prompts == {"tabby": described("tabby cat", 0, 4), "beagle": described("beagle", 4, 4)}
    assert load_prompts(tmp_path / "prompts" / PROMPTS_FILE) == prompts
    assert list(prompts) == list(names)
    assert sleeps == []
    # The request follows the protocol and carries the key in the Authorization header only.
    assert len(server.requests) == 2
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.5 and body["max_tokens"] == 256
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert user.startswith("Write 4 different visual descriptions of tabby cat")
    assert '"tabby cat, which has ..."' in user and "no numbering" in user and "viewpoint" in user
    assert SECRET not in json.dumps(body)
    # The key is in no file written and in no line shown.
    written = files_under(tmp_path)
    assert {p.name for p in written} >= {PROMPTS_FILE}
    assert len(list((tmp_path / "prompts" / "cache").glob("*.json"))) == 2
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert not any(SECRET in line for line in lines)
    assert SECRET not in capsys.readouterr().out
    # A rerun costs nothing: every class comes from the cache.
    again, _, lines = run(settings_for(server.url), names, tmp_path / "prompts")
    assert again == prompts and len(server.requests) == 2
    assert "2 classes from the cache" in lines[-1]
    # Another N, model or instruction is another cache entry.
    run(settings_for(server.url, per_class=3), {"tabby": "tabby cat"}, tmp_path / "prompts")
    run(settings_for(server.url, model="other"), {"tabby": "tabby cat"}, tmp_path / "prompts")
    run(
        settings_for(
            server.url,
            instruction="Write {n} different visual descriptions of {name} for a text-to-image model, in a new way.",
        ),
        {"tabby": "tabby cat"},
        tmp_path / "prompts",
    )
    assert len(server.requests) == 5


def test_server_errors_are_retried_with_exponential_backoff(server, api_key, tmp_path):
    server.script = [status(500), status(503), good]
    prompts, sleeps, _ = run(settings_for(server.url, max_retries=3), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == described("cat", 0, 4)
    assert sleeps == [0.01, 0.02]
    assert len(server.requests) == 3


def test_a_timeout_is_retried(server, api_key, tmp_path):
    server.script = [answer("\n".join(described("cat", 0, 4)), delay=TIMEOUT * 2.5)]
    started = time.monotonic()
    prompts, sleeps, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert time.monotonic() - started < TIMEOUT * 2.5  # the client did not wait for the slow answer
    assert prompts["cat"] == described("cat", 0, 4)  # from the second request
    assert sleeps == [0.01] and len(server.requests) == 2


@pytest.mark.parametrize(
    "reply",
    [
        lambda request, server: (200, b"this is not json {", 0.0),
        lambda request, server: (200, b'{"object": "error", "message": "overloaded"}', 0.0),
        lambda request, server: (200, b'{"choices": []}', 0.0),
        lambda request, server: (200, b'{"choices": [{"message": {"content": 42}}]}', 0.0),
    ],
    ids=["not-json", "no-choices", "empty-choices", "content-not-text"],
)
def test_malformed_answers_are_retried(server, api_key, tmp_path, reply):
    server.script = [reply]
    prompts, sleeps, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == described("cat", 0, 4)
    assert sleeps == [0.01] and len(server.requests) == 2


def test_malformed_answers_until_the_budget_runs_out(server, api_key, tmp_path):
    server.default = lambda request, server: (200, b"<html>502 bad gateway</html>", 0.0)
    with pytest.raises(ModelError) as error:
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert f"LLM endpoint {server.url}/chat/completions failed all 3 requests for class 'cat'" in message
    assert "the answer is not JSON (it began '<html>502 bad gateway</html>')" in message
    assert "\n" not in message


def test_too_few_prompts_are_asked_for_again(server, api_key, tmp_path):
    first = described("cat", 100, 2)
    server.script = [
        answer("Here are the descriptions:\n- " + first[0] + "\n- " + first[1] + "\n- a dog, which has ears")
    ]
    prompts, sleeps, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == first + described("cat", 0, 2)
    assert sleeps == []  # a short answer is no failure: asked again at once
    follow_up = server.requests[1]["body"]["messages"][1]["content"]
    assert follow_up.startswith("Write 2 different visual descriptions of cat")
    # The follow-up lists none of the prompts kept (small models copy them back), and has another seed.
    assert not any(line in follow_up for line in first)
    assert server.requests[1]["body"]["seed"] != server.requests[0]["body"]["seed"]


def test_repeated_prompts_do_not_count(server, api_key, tmp_path):
    same = described("cat", 0, 3)
    server.script = [answer("\n".join(same)), answer("\n".join(same)), answer("\n".join(described("cat", 3, 1)))]
    prompts, _, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == described("cat", 0, 4)
    assert len(server.requests) == 3


def test_a_cut_off_answer_loses_its_last_line(server, api_key, tmp_path):
    server.script = [answer("\n".join(described("cat", 0, 4)) + "\ncat, which has a clear outl", "length")]
    prompts, _, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert prompts["cat"] == described("cat", 0, 4)
    assert len(server.requests) == 1


def test_prose_instead_of_a_list_fails_clearly_and_keeps_classes_done(server, api_key, tmp_path):
    prose = (
        "A beagle is a breed of small scent hound, similar in appearance to the much larger foxhound.\n"
        "Beagles were developed primarily for hunting hare. I cannot write a list."
    )
    server.script = [good] + [answer(prose)] * 3
    settings = settings_for(server.url)
    with pytest.raises(ModelError) as error:
        run(settings, {"tabby": "tabby cat", "beagle": "beagle"}, tmp_path)
    message = str(error.value)
    assert message.startswith(
        f"class 'beagle': only 0 of 4 valid prompts after 3 requests to LLM endpoint {server.url}"
    )
    assert "rejected: 6 not of the form '<class>, which has ...'" in message
    assert "last answer began 'A beagle is a breed" in message
    assert "raise prompts.max_retries" in message
    assert f"1 of 2 classes are done and cached in {tmp_path / 'cache'}" in message
    assert "\n" not in message
    assert not (tmp_path / PROMPTS_FILE).exists()
    # The finished class is cached: a rerun asks only for the other one.
    server.script = [answer(described("beagle", 50, 1)[0]), good]
    prompts, _, _ = run(settings, {"tabby": "tabby cat", "beagle": "beagle"}, tmp_path)
    assert len(server.requests) == 6
    assert prompts["tabby"] == described("tabby cat", 0, 4)
    assert prompts["beagle"] == described("beagle", 50, 1) + described("beagle", 4, 3)


def test_an_unfinished_class_resumes_from_its_cached_prompts(server, api_key, tmp_path):
    server.default = answer(described("cat", 0, 1)[0])  # one new prompt, then only repeats
    with pytest.raises(ModelError, match=r"only 1 of 4 valid prompts after 3 requests .*rejected: 2 duplicate"):
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    server.default, server.served = good, 10
    prompts, _, _ = run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert server.requests[-1]["body"]["messages"][1]["content"].startswith("Write 3 different")
    assert prompts["cat"] == described("cat", 0, 1) + described("cat", 10, 3)
    assert len(server.requests) == 4


def test_unreachable_endpoint_fails_after_the_budget_and_keeps_the_cache(server, api_key, tmp_path):
    names = {"tabby": "tabby cat", "beagle": "beagle"}
    run(settings_for(server.url), {"tabby": "tabby cat"}, tmp_path)
    cached = {p: p.read_bytes() for p in (tmp_path / "cache").glob("*.json")}
    assert len(cached) == 1

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    sleeps, lines = Recorder(), Recorder()
    with pytest.raises(ModelError) as error:
        write_class_prompts(settings_for(closed, max_retries=3), names, tmp_path, echo=lines, sleep=sleeps, backoff=0.5)
    message = str(error.value)
    assert message.startswith(f"LLM endpoint {closed}/chat/completions failed all 4 requests for class 'beagle'")
    assert "cannot connect" in message and "Connection refused" in message
    assert "check that it runs and is reachable at prompts.base_url" in message
    assert "1 of 2 classes are done and cached" in message
    assert sleeps.items == [0.5, 1.0, 2.0]  # no wait after the last request
    assert {p: p.read_bytes() for p in (tmp_path / "cache").glob("*.json")} == cached
    assert SECRET not in message


def test_a_refused_key_fails_at_once_without_showing_it(server, api_key, tmp_path):
    server.script = [status(401, json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}"}}).encode())]
    with pytest.raises(ModelError) as error:
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert "refused the request (HTTP 401" in message and f"the environment variable {KEY_ENV}" in message
    assert SECRET not in message and "***" in message
    assert len(server.requests) == 1


def test_a_wrong_url_fails_at_once(server, api_key, tmp_path):
    server.script = [status(404, b"not found")]
    with pytest.raises(ModelError, match=r"was not found \(HTTP 404: not found\): check prompts.base_url"):
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    server.script = [status(400, b'{"error": "max_tokens too large"}')]
    with pytest.raises(ModelError, match=r"rejected the request \(HTTP 400: .*max_tokens too large.*prompts.model"):
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert len(server.requests) == 2


def test_no_key_in_the_environment_sends_no_authorization(server, monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert "Authorization" not in server.requests[0]["headers"]


def test_settings_an_llm_cannot_do_without(tmp_path):
    cases = [
        (settings_for(None), r"prompts.base_url is not set"),
        (settings_for("localhost:8000"), r"prompts.base_url 'localhost:8000' is not an http\(s\) URL"),
        (settings_for("http://127.0.0.1:9/v1", model=None), r"prompts.model is not set"),
        (settings_for("http://127.0.0.1:9/v1", instruction="Describe it."), r"has no '\{name\}'"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            write_class_prompts(settings, {"cat": "cat"}, tmp_path, echo=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_chat_url_and_repr():
    assert chat_url("http://localhost:8000/v1/") == "http://localhost:8000/v1/chat/completions"
    assert chat_url("https://host/v1/chat/completions") == "https://host/v1/chat/completions"
    backend = OpenAIChatBackend("http://localhost:8000/v1", "m", api_key=SECRET)
    assert SECRET not in repr(backend) and SECRET not in str(vars(backend).get("describe"))


# --- The key goes only to the endpoint, and never into a file, a message or the config ---------------


class RecordingServer(ThreadingHTTPServer):
    """Loopback server answering every request with one status, headers and body, recording each."""

    daemon_threads = True

    def __init__(self, code: int = 200, headers: dict | None = None, payload: bytes = b""):
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.code, self.reply_headers, self.payload = code, headers or {}, payload
        self.requests: list[dict] = []

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RecordingHandler(BaseHTTPRequestHandler):
    def _reply(self):
        server: RecordingServer = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        server.requests.append(record)
        self.send_response(server.code)
        for name, value in server.reply_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(server.payload)))
        self.end_headers()
        self.wfile.write(server.payload)

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    started = []

    def start(httpd):
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        started.append(httpd)
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(serve, api_key, tmp_path, code):
    # Another port is another origin: the server redirected to must never see the request.
    answer_body = chat_body("\n".join(described("cat", 0, 4)))
    target = serve(RecordingServer(200, {"Content-Type": "application/json"}, answer_body))
    location = f"{target.origin}/v1/chat/completions?from=redirect"
    endpoint = serve(RecordingServer(code, {"Location": location}))
    settings = settings_for(f"{endpoint.origin}/v1")
    try:
        run(settings, {"cat": "cat"}, tmp_path)
        message = None
    except ModelError as exc:
        message = str(exc)
    assert [r["headers"].get("Authorization") for r in target.requests] == []
    assert target.requests == []
    assert message is not None and len(endpoint.requests) == 1  # refused at once, not retried
    assert f"{endpoint.origin}/v1/chat/completions redirected the request (HTTP {code}) to {location}:" in message
    assert "prompts.base_url" in message and "\n" not in message and SECRET not in message
    assert not any(SECRET.encode() in p.read_bytes() for p in files_under(tmp_path))


def test_a_relative_redirect_is_not_followed_either(serve, api_key, tmp_path):
    endpoint = serve(RecordingServer(302, {"Location": "/v2/chat/completions"}))
    with pytest.raises(ModelError, match=r"redirected the request \(HTTP 302\) to http://127\.0\.0\.1:\d+/v2/chat/"):
        run(settings_for(f"{endpoint.origin}/v1"), {"cat": "cat"}, tmp_path)
    assert len(endpoint.requests) == 1


def test_a_key_echoed_in_an_answer_is_in_no_file_and_no_message(server, api_key, tmp_path):
    lines = described("cat", 0, 4)
    lines[1] = f"cat, which has a collar tag that reads {SECRET} seen from the side"
    server.script = [answer("\n".join(lines) + f"\nYour API key is {SECRET}.")]
    prompts, _, echoed = run(settings_for(server.url), {"cat": "cat"}, tmp_path / "prompts")
    assert [p for i, p in enumerate(prompts["cat"]) if i != 1] == [lines[0], lines[2], lines[3]]
    assert not any(SECRET in line for line in echoed)
    for path in files_under(tmp_path):  # prompts.json and the cache
        assert SECRET.encode() not in path.read_bytes(), path
    # An answer that is only the key, until the budget runs out: the error quotes it masked.
    server.default = answer(f"dog, I cannot help with that; your key is {SECRET}")
    with pytest.raises(ModelError) as error:
        run(settings_for(server.url, min_chars=200), {"dog": "dog"}, tmp_path / "prompts")
    assert SECRET not in str(error.value) and "***" in str(error.value)
    written = files_under(tmp_path)
    assert len(written) >= 3  # prompts.json and a cache file per class
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


LOOKS_LIKE_KEYS = [
    SECRET,
    f"  {SECRET}\n",
    f"Bearer {SECRET}",
    "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",  # the shape of a variable name, but a token
    "gsk_0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b",
]


@pytest.mark.parametrize("value", LOOKS_LIKE_KEYS, ids=["sk", "padded", "bearer", "hf-token", "long-token"])
def test_a_key_pasted_into_api_key_env_is_refused_without_showing_it(value):
    for make in (
        lambda: PromptsConfig(api_key_env=value),
        lambda: setattr(PromptsConfig(), "api_key_env", value),
        lambda: load_config(None, [f"prompts.api_key_env={value}"]),
    ):
        with pytest.raises(ConfigError) as error:
            make()
        message = str(error.value)
        assert "prompts.api_key_env" in message and "looks like a key" in message
        assert "environment variable" in message and "\n" not in message
        assert value.strip() not in message and value.split()[-1] not in message


def test_a_key_pasted_into_api_key_env_stops_the_cli_before_anything_is_written(server, tmp_path):
    out = tmp_path / "out"
    sets = {
        "output_dir": out,
        "data.demo.classes": 2,
        "data.shots": 2,
        "prompts.backend": "openai",
        "prompts.model": "test-model",
        "prompts.base_url": server.url,
        "prompts.per_class": 2,
        "prompts.api_key_env": SECRET,
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    result = subprocess.run(
        [sys.executable, "-m", "synthshot.cli", "prompts", *args, "--offline"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "looks like a key" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert SECRET not in result.stdout + result.stderr
    assert server.requests == []
    assert not out.exists() or files_under(out) == []


@pytest.mark.parametrize(
    ("value", "name"),
    [("OPENAI_API_KEY", "OPENAI_API_KEY"), (" MY_KEY ", "MY_KEY"), ("my_key_2", "my_key_2"), ("", None), (None, None)],
)
def test_api_key_env_takes_a_variable_name_or_nothing(value, name):
    assert PromptsConfig(api_key_env=value).api_key_env == name


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_named_variable_that_is_not_set_fails_for_a_remote_endpoint(monkeypatch, tmp_path, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    settings = settings_for("http://192.0.2.1/v1", max_retries=0)  # not loopback; never reached
    with pytest.raises(ConfigError) as error:
        run(settings, {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert f"the environment variable {KEY_ENV}" in message and "is not set" in message
    assert "prompts.api_key_env: null" in message and "\n" not in message
    assert files_under(tmp_path) == []


def test_no_key_asked_for_sends_none_anywhere(server, monkeypatch, api_key, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    run(settings_for(server.url, api_key_env=None), {"cat": "cat"}, tmp_path)
    assert "Authorization" not in server.requests[0]["headers"]
    remote = make_backend(settings_for("https://llm.example.com/v1", api_key_env=""))  # no error: no key wanted
    assert remote.url == "https://llm.example.com/v1/chat/completions"


def test_a_key_with_a_trailing_newline_is_sent_without_it(server, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, SECRET + "\n")
    run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_a_key_that_cannot_be_a_header_fails_clearly(server, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, SECRET + "\nX-Injected: 1")
    with pytest.raises(ConfigError) as error:
        run(settings_for(server.url), {"cat": "cat"}, tmp_path)
    message = str(error.value)
    assert f"the environment variable {KEY_ENV}" in message and SECRET not in message and "\n" not in message
    assert server.requests == []
