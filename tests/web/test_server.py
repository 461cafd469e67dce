"""A real eventlet server on a loopback port, driven by real python-socketio clients."""
import subprocess
import sys
import time

import pytest
import requests
import torch
from conftest import ROOT, WAIT, Recorder, RunningServer, build_tiny_gpt2

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory, embedded):
    """A GPT-2 with random weights, big enough that reading a long prompt takes seconds."""
    folder = tmp_path_factory.mktemp("slow-gpt2")
    build_tiny_gpt2(embedded.tokenizer, n_positions=1024, n_embd=1024, n_layer=12, n_head=16).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    return folder


def test_page_health_and_client_library_are_served(embedded_server):
    health = requests.get(embedded_server.url + "/healthz", timeout=5).json()
    assert health["ready"] is True and health["device"] == "cpu" and health["dtype"] == "float32"
    page = requests.get(embedded_server.url + "/", timeout=5)
    assert page.status_code == 200 and 'role="listbox"' in page.text
    library = requests.get(embedded_server.url + "/vendor/socket.io/socket.io.min.js", timeout=5)
    assert library.status_code == 200 and "io" in library.text


def test_offline_auto_serves_the_embedded_model_and_says_so(embedded_server):
    health = requests.get(embedded_server.url + "/healthz", timeout=5).json()
    assert health["model"].startswith("SmolLM2-135M")
    assert "gpt2-large" in health["warning"]


def test_hub_answers_a_second_client_while_the_first_one_generates(slow_model_dir):
    server = RunningServer(slow_model_dir).wait_ready()
    writer, other = Recorder(server.url), Recorder(server.url)
    try:
        long_text = " ".join(["the cat sat on the mat"] * 130)  # ~900 tokens: seconds of prefill
        writer.client.emit("suggest", {"id": "long", "text": long_text, "settings": {"length": 4}})
        time.sleep(0.5)  # the model is now reading the long prompt in its worker thread
        asked = time.monotonic()
        other.client.emit("suggest", {"id": "bad", "text": "x", "settings": {"n": 0}})
        answered, error = other.wait("error", "bad")
        health = requests.get(server.url + "/healthz", timeout=5).json()
        first_delta, _ = writer.wait("delta", "long")
        assert asked < first_delta, "the prompt should still have been read when the second client asked"
        assert answered < first_delta, "the second client waited for the first one's model work"
        assert error["field"] == "settings.n"
        assert health["queue"]["running"] == 1
        writer.wait("done", "long")
    finally:
        writer.close()
        other.close()
        server.stop()


def test_disconnect_mid_stream_frees_the_model(embedded_server):
    leaving = Recorder(embedded_server.url)
    long_request = {"id": "bye", "text": "Long story:", "settings": {"length": 64, "stop_at": "length"}}
    leaving.client.emit("suggest", long_request)
    leaving.wait("delta", "bye")
    leaving.close()
    staying = Recorder(embedded_server.url)
    try:
        staying.client.emit("suggest", {"id": "next", "text": "Hello", "settings": {"length": 3}})
        _, done = staying.wait("done", "next")
        assert len(done["options"]) == 3
        assert requests.get(embedded_server.url + "/healthz", timeout=5).json()["queue"]["running"] == 0
    finally:
        staying.close()


def test_an_unknown_model_stops_start_up_with_advice():
    result = subprocess.run([sys.executable, "-m", "webapp", "--model", "nobody/no-such-model", "--port", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(ROOT / "test-artifacts")})
    assert result.returncode == 2
    assert "nobody/no-such-model" in result.stderr
    assert "--model embedded" in result.stderr


def test_while_the_model_loads_the_server_answers_and_queues_requests(slow_model_dir):
    server = RunningServer(slow_model_dir)
    try:
        first_answer = None
        deadline = time.monotonic() + WAIT
        while first_answer is None and time.monotonic() < deadline:
            try:
                first_answer = requests.get(server.url + "/healthz", timeout=WAIT).json()
            except requests.ConnectionError:
                time.sleep(0.02)
        assert first_answer["ready"] is False and first_answer["loading"] is True
        assert first_answer["device"] == "cpu" and first_answer["dtype"] == "float32"
        early = Recorder(server.url)
        try:
            _, status = early.wait("status")
            assert status["ready"] is False
            early.client.emit("suggest", {"id": "early", "text": "Hello", "settings": {"length": 2}})
            done_at, done = early.wait("done", "early")
            ready_at = next(t for t, e, d in early.events if e == "status" and d["ready"])
            assert ready_at < done_at
            assert len(done["options"]) == 3
        finally:
            early.close()
    finally:
        server.stop()


def test_a_device_that_is_not_there_stops_start_up():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "webapp", "--model", "embedded", "--device", "cuda", "--port", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr
