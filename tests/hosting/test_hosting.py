"""A class on a real server: loopback port, real python-socketio clients, cookies, origins and load."""
import dataclasses
import subprocess
import sys
import time

import pytest
import requests
import socketio
from conftest import (
    ROOT,
    WAIT,
    FailingModel,
    Recorder,
    RunningServer,
    ThreadedServer,
    connect,
    make_app,
    payloads,
    wait_for,
)

pytestmark = pytest.mark.server

CODE = "blue-otter-7"
ADMIN = "dashboard-token-for-tests"
GREEDY = {"temperature": 0, "stop_at": "length"}


@pytest.fixture(scope="module")
def class_server(tiny_model_dir):
    """A class with a code, a low rate limit and one extra allowed origin."""
    server = RunningServer(tiny_model_dir, {"TABWRITE_REQUESTS_PER_MINUTE": "4"},
                           args=["--access-code", CODE, "--admin-token", ADMIN,
                                 "--allowed-origin", "https://proxy.school.example"]).wait_ready()
    yield server
    server.stop()


def join(server, name):
    """Join as a browser would; return the Cookie header for the Socket.IO connection."""
    answer = requests.post(server.url + "/join", data={"name": name, "code": CODE}, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return {"Cookie": f"tabwrite_session={answer.cookies['tabwrite_session']}"}


def wait_until(condition, timeout=10.0):
    """Poll `condition` until it holds or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def refused(url, headers, origin=None):
    """True when the server refuses a Socket.IO connection with these headers and Origin."""
    try:
        Recorder(url, headers, origin).close()
    except socketio.exceptions.ConnectionError:
        return True
    return False


def test_a_foreign_origin_is_refused_and_the_own_and_allowed_ones_connect(class_server):
    cookie = join(class_server, "Ada")
    assert refused(class_server.url, cookie, origin="http://evil.example")
    assert refused(class_server.url, cookie, origin="http://127.0.0.1.evil.example")
    assert not refused(class_server.url, cookie, origin=class_server.url)
    assert not refused(class_server.url, cookie, origin="https://proxy.school.example")


def test_without_a_session_cookie_the_connection_is_refused(class_server):
    assert refused(class_server.url, {})
    assert refused(class_server.url, {"Cookie": "tabwrite_session=forged"})
    page = requests.get(class_server.url + "/", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and page.headers["Location"].startswith("/join")


def test_a_joined_student_writes(class_server):
    student = Recorder(class_server.url, join(class_server, "Grace"))
    try:
        student.client.emit("suggest", {"id": "s", "text": "Hello", "settings": {**GREEDY, "length": 3}})
        _, done = student.wait("done", "s")
        assert len(done["options"]) == 3
    finally:
        student.close()


def test_an_oversized_message_disconnects_only_its_sender(class_server):
    flooder = Recorder(class_server.url, join(class_server, "Flood"))
    steady = Recorder(class_server.url, join(class_server, "Steady"))
    try:
        flooder.client.emit("suggest", {"id": "big", "text": "x" * 70_000})
        assert wait_until(lambda: not flooder.client.connected), "a message over 64 KB should close its connection"
        assert flooder.find("done", "big") is None and flooder.find("error", "big") is None
        steady.client.emit("suggest", {"id": "fine", "text": "Hello", "settings": {**GREEDY, "length": 2}})
        _, done = steady.wait("done", "fine")
        assert len(done["options"]) == 3
    finally:
        steady.close()
        flooder.close()


def test_the_request_past_the_rate_limit_gets_an_error(class_server):
    student = Recorder(class_server.url, join(class_server, "Eager"))
    try:
        for i in range(4):
            student.client.emit("suggest", {"id": f"r{i}", "text": "Hi", "settings": {**GREEDY, "length": 1}})
            student.wait("done", f"r{i}")
        student.client.emit("suggest", {"id": "r4", "text": "Hi", "settings": {**GREEDY, "length": 1}})
        _, error = student.wait("error", "r4")
        assert error["code"] == "rate_limited" and error["retry_after"] > 0
    finally:
        student.close()


def test_the_teacher_sees_the_class_and_disconnects_a_student(class_server):
    student = Recorder(class_server.url, join(class_server, "Leaving"))
    try:
        with requests.Session() as teacher:
            assert teacher.post(class_server.url + "/admin/login", data={"token": ADMIN}, timeout=10).ok
            state = teacher.get(class_server.url + "/admin/api/state", timeout=10).json()
            [row] = [s for s in state["students"] if s["name"] == "Leaving"]
            answer = teacher.post(class_server.url + f"/admin/api/students/{row['id']}/disconnect", json={}, timeout=10)
        assert answer.json() == {"disconnected": 1}
        _, notice = student.wait("error")
        assert notice["code"] == "signed_out"
        assert wait_until(lambda: not student.client.connected)
    finally:
        student.close()


def test_wrong_codes_are_refused_generically_then_throttled(tiny_model_dir):
    server = RunningServer(tiny_model_dir, {"TABWRITE_JOIN_ATTEMPTS_PER_MINUTE": "3"},
                           args=["--access-code", CODE]).wait_ready()
    try:
        answers = [requests.post(server.url + "/join", data={"name": "Eve", "code": guess}, timeout=10)
                   for guess in ("1234", "blue", "otter")]
        assert [a.status_code for a in answers] == [403, 403, 403]
        assert len({a.text for a in answers}) == 1, "every wrong code gets the same answer"
        throttled = requests.post(server.url + "/join", data={"name": "Eve", "code": CODE}, timeout=10)
        assert throttled.status_code == 429 and "Retry-After" in throttled.headers
    finally:
        server.stop()


def test_thirty_students_at_once_each_get_only_their_own_text(embedded_server, embedded):
    texts = [f"Student number {i} wrote a story about the {animal}:" for i, animal in
             enumerate(["cat", "dog", "owl", "fox", "bee", "cow"] * 5)]
    # the most writing time a step may take: on a busy machine thirty batched students write slowly
    settings = {**GREEDY, "n": 1, "length": 6, "max_time": 30}
    expected_app = make_app(embedded)
    try:
        reference = connect(expected_app)
        expected = []
        for i, text in enumerate(texts):
            reference.emit("suggest", {"id": f"ref{i}", "text": text, "settings": settings})
            expected.append(payloads(wait_for(reference, f"ref{i}"), "done", f"ref{i}")[0]["options"])
    finally:
        expected_app.extensions["tabwrite"].scheduler.stop()

    students = [Recorder(embedded_server.url) for _ in texts]
    try:
        for i, (student, text) in enumerate(zip(students, texts)):
            student.client.emit("suggest", {"id": f"s{i}", "text": text, "settings": settings})
        for i, student in enumerate(students):
            _, done = student.wait("done", f"s{i}")
            assert done["finish"] == ["length"], f"student {i} was stopped early: {done['finish']}"
            assert done["options"] == expected[i], f"student {i} got someone else's text"
            ids = {data.get("id") for _, event, data in student.events if event in ("delta", "done", "error")}
            assert ids == {f"s{i}"}, f"student {i} saw other requests: {ids}"
            assert not [data for _, event, data in student.events if event == "error"]
    finally:
        for student in students:
            student.close()


def test_a_model_failing_mid_stream_on_a_real_server(tiny, caplog):
    server = ThreadedServer(make_app(dataclasses.replace(tiny, model=FailingModel(tiny.model))))
    student = Recorder(server.url)
    try:
        student.client.emit("suggest", {"id": "boom", "text": "hello", "settings": {**GREEDY, "length": 10}})
        _, error = student.wait("error", "boom")
        assert error["code"] == "internal" and student.find("delta", "boom"), "it failed after some text"
        student.client.emit("suggest", {"id": "after", "text": "hello", "settings": {**GREEDY, "length": 3}})
        _, done = student.wait("done", "after")
        assert len(done["options"]) == 3 and student.client.connected
    finally:
        student.close()
        server.stop()


def test_a_weak_secret_key_stops_a_server_for_the_network():
    result = subprocess.run([sys.executable, "-m", "webapp", "--model", "embedded", "--host", "0.0.0.0", "--port", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
                            env={"PATH": "/usr/bin:/bin", "TABWRITE_SECRET_KEY": "changeme",
                                 "HOME": str(ROOT / "test-artifacts")})
    assert result.returncode == 2
    assert "SECRET_KEY is too weak" in result.stderr


def test_the_banner_shows_the_address_and_code_to_share(tiny_model_dir):
    server = RunningServer(tiny_model_dir, args=["--access-code", CODE, "--admin-token", ADMIN]).wait_ready()
    server.stop()
    banner = server.log.read_text()
    assert f"enter the class code: {CODE}" not in banner, "a localhost server is not shared"
    assert "--host 0.0.0.0" in banner and f"token: {ADMIN}" in banner
