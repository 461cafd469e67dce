"""Shared fixtures: the embedded model, a tiny GPT-2 built here, apps, and a real server."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

from webapp import create_app
from webapp.config import cache_dir
from webapp.models import load_model, resolve_model, wrap_model

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WAIT = 120  # seconds a test waits for a reply before it fails


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model (SmolLM2-135M), loaded once per test session."""
    return load_model(resolve_model("embedded"), device="cpu", cache_root=cache_dir({}))


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


def make_app(model, **config):
    """A real app in threading mode (what Flask-SocketIO's test client drives)."""
    return create_app({"ASYNC_MODE": "threading", **config}, model=model)


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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """`python -m webapp` in a subprocess on a loopback port, as a user starts it."""

    def __init__(self, model, extra_env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ARTIFACTS / f"server-{self.port}.log"
        ARTIFACTS.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
        with self.log.open("w") as log:  # the child keeps its own copy of the file handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webapp", "--model", str(model), "--port", str(self.port)],
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
def embedded_server(embedded):
    """`--model auto` with no Hub and an empty Hugging Face cache: the embedded model, with a warning."""
    empty_hf_home = ARTIFACTS / "empty-hf-home"
    server = RunningServer("auto", {"HF_HOME": str(empty_hf_home)}).wait_ready()
    yield server
    server.stop()
