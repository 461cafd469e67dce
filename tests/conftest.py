"""Shared fixtures: the embedded model, a tiny GPT-2 built here, apps, and a real server."""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio
import torch

from webapp import create_app
from webapp.config import cache_dir
from webapp.models.loading import load_model, resolve_model, wrap_model

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WAIT = 120  # seconds a test waits for a reply before it fails


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model (SmolLM2-135M) in float32 (exact: tests compare texts), loaded once per session."""
    return load_model(resolve_model("embedded"), device="cpu", dtype="float32", cache_root=cache_dir({}))


def run(engine, text, settings):
    """Start a request on `engine` and step it to the end; return the generation and every delta sent."""
    generation, first = engine.start(text, settings)
    deltas = [first]
    while not generation.finished:
        deltas.append(engine.step(generation))
    return generation, deltas


def build_tiny_gpt2(tokenizer, n_positions=256, seed=0, **sizes):
    """A GPT-2-architecture model with random weights and the embedded tokenizer's vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions,
                        n_embd=sizes.get("n_embd", 64), n_layer=sizes.get("n_layer", 2),
                        n_head=sizes.get("n_head", 2), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def tiny(embedded):
    """A tiny random GPT-2 (fast; its text is gibberish, its protocol is real)."""
    model = build_tiny_gpt2(embedded.tokenizer)
    return wrap_model(model, embedded.tokenizer, "tiny-gpt2", max_context=256)


class FailingModel(torch.nn.Module):
    """The one stub here: a model that raises on its third forward pass, as a broken GPU might."""

    def __init__(self, model, fail_on_call=3):
        super().__init__()
        self.model = model
        self.config = model.config
        self.generation_config = model.generation_config
        self.calls = 0
        self.fail_on_call = fail_on_call

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    def forward(self, **inputs):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated device failure")
        return self.model(**inputs)


def make_app(model, **config):
    """A real app in threading mode (what Flask-SocketIO's test client drives), with its own database."""
    database = Path(tempfile.mkdtemp(prefix="tabwrite-test-")) / "tabwrite.sqlite3"
    return create_app({"ASYNC_MODE": "threading", "DATABASE": str(database), **config}, model=model)


@pytest.fixture
def tiny_app(tiny):
    app = make_app(tiny)
    yield app
    app.extensions["tabwrite"].scheduler.stop()


@pytest.fixture
def embedded_app(embedded):
    app = make_app(embedded)
    yield app
    app.extensions["tabwrite"].scheduler.stop()


def connect(app):
    """A Socket.IO test client with the connect-time `status` already read."""
    client = app.extensions["socketio"].test_client(app)
    assert client.is_connected()
    client.get_received()
    return client


def wait_for(client, request_id, event="done", timeout=WAIT):
    """Collect a test client's events until `event` arrives for `request_id`; return them all."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(client.get_received())
        if any(e["name"] == event and e["args"][0].get("id") == request_id for e in seen):
            return seen
        time.sleep(0.01)
    raise AssertionError(f"no {event} for {request_id} within {timeout}s; got {seen}")


def payloads(events, name, request_id=None):
    """The payloads of events called `name` (for one request id, if given)."""
    return [e["args"][0] for e in events
            if e["name"] == name and (request_id is None or e["args"][0].get("id") == request_id)]


def class_presses_tab(app, texts, length, options=3):
    """Every student (one per text) presses Tab at once with a seed; each one's `done` payload.

    Each student must receive only its own request's deltas, and they must add up to its options.
    """
    students = [connect(app) for _ in texts]
    for index, (student, text) in enumerate(zip(students, texts)):
        student.emit("suggest", {"id": f"s{index}", "text": text,
                                 "settings": {"n": options, "seed": index, "length": length, "stop_at": "length"}})
    finished = []
    for index, student in enumerate(students):
        events = wait_for(student, f"s{index}")
        [done] = payloads(events, "done", f"s{index}")
        deltas = payloads(events, "delta", f"s{index}")
        assert {delta["id"] for delta in payloads(events, "delta")} == {f"s{index}"}  # only its own streams
        assert ["".join(delta["deltas"][option] for delta in deltas) for option in range(options)] == done["options"]
        finished.append(done)
    return finished


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A python-socketio client that timestamps every event it receives."""

    def __init__(self, url, headers=None, origin=None, transports=("websocket",)):
        """`origin` replaces the Origin header the websocket library sends (its own host by default)."""
        self.events = []
        self.arrived = threading.Condition()
        options = {"websocket_extra_options": {"origin": origin}} if origin else {}
        self.client = socketio.Client(reconnection=False, **options)
        self.client.on("*", self._record)
        self.client.connect(url, headers=headers or {}, transports=list(transports), wait_timeout=WAIT)

    def _record(self, event, data):
        with self.arrived:
            self.events.append((time.monotonic(), event, data))
            self.arrived.notify_all()

    def wait(self, event, request_id=None, timeout=WAIT):
        """Block until `event` (for `request_id`, or any) arrives; return its arrival time and payload."""
        with self.arrived:
            found = self.arrived.wait_for(lambda: self.find(event, request_id), timeout)
        assert found, f"no {event} for {request_id}: {self.events[-5:]}"
        return found

    def find(self, event, request_id=None):
        return next(((t, d) for t, e, d in self.events if e == event and isinstance(d, dict)
                     and (request_id is None or d.get("id") == request_id)), None)

    def close(self):
        self.client.disconnect()
        websocket = getattr(self.client.eio, "ws", None)
        if websocket is not None:  # left open by the library when the server hung up first
            websocket.shutdown()


class ThreadedServer:
    """An app built in this process (threading mode) served on a loopback port by Werkzeug."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.app.extensions["tabwrite"].scheduler.stop()


class RunningServer:
    """`python -m webapp` in a subprocess on a loopback port, as a user starts it."""

    def __init__(self, model, extra_env=None, args=(), port=None, database=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ARTIFACTS / f"server-{self.port}.log"
        ARTIFACTS.mkdir(exist_ok=True)
        self.database = database or Path(tempfile.mkdtemp(prefix="tabwrite-server-")) / "tabwrite.sqlite3"
        # float32 whatever the CPU: tests compare texts, and bfloat16 rounds differently in a batch than alone
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TABWRITE_DATABASE": str(self.database),
               "TABWRITE_DTYPE": "float32", **(extra_env or {})}
        with self.log.open("a") as log:  # the child keeps its own copy of the file handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webapp", "--model", str(model), "--port", str(self.port), *args],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).json()["ready"]:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.log.read_text()[-3000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded):
    """A tiny random GPT-2 on disk: starts in a second, and its protocol is real."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    build_tiny_gpt2(embedded.tokenizer).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def embedded_server(embedded):
    """`--model auto` with no Hub and an empty Hugging Face cache: the embedded model, with a warning."""
    empty_hf_home = ARTIFACTS / "empty-hf-home"
    server = RunningServer("auto", {"HF_HOME": str(empty_hf_home)}).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def page(browser, embedded_server):
    """The editor on the shared embedded server in a fresh browser context; it must end without page errors."""
    from browsing import open_page

    page = open_page(browser, embedded_server.url)
    yield page
    assert page.errors == []
    page.context.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Debian Chromium per browser test module (see browsing.py)."""
    from browsing import CHROMIUM, CHROMIUM_ARGS, playwright_api

    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
