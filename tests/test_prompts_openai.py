"""The `openai` prompts backend against a real HTTP server on loopback that speaks the OpenAI
chat-completions protocol: good answers, failures (500, timeout, malformed JSON, 401, 404,
unreachable), prose, too few prompts, the cache, and the API key kept out of every file."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthshot.config import PromptsConfig
from synthshot.errors import ConfigError, ModelError
from synthshot.prompts import PROMPTS_FILE, load_prompts, write_class_prompts
from synthshot.prompts.openai_chat import OpenAIChatBackend, chat_url

KEY_ENV = "SYNTHSHOT_TEST_LLM_KEY"
SECRET = "sk-test-0123456789-very-secret"
TIMEOUT = 0.2  # seconds per request; the "slow" answer takes longer
VIEWS = ["front", "side", "back", "above", "below", "far away", "close up", "left", "right", "behind", "afar", "low"]


def described(name: str, start: int, count: int) -> list[str]:
    return [
        f"{name}, which has a clear outline seen from the {VIEWS[i % len(VIEWS)]} ({i})"
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
    assert follow_up.endswith("\n" + "\n".join(first))


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
    assert "rejected: 6 not of the form '<class>, ...'" in message
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
