"""The class's limits that no one student can turn against the others: throttles, sessions, connections, hosts."""
import time

import pytest
from conftest import make_app

from webapp.hosting import access
from webapp.hosting.store import DAY_SECONDS, Store

CODE = "owl-42"
ADMIN = "teacher-token-123456"


@pytest.fixture
def class_app(tiny, monkeypatch):
    monkeypatch.setattr(access, "FAILED_ATTEMPT_SECONDS", 0.0)  # the wait after a wrong guess has its own test
    app = make_app(tiny, ACCESS_CODE=CODE, ADMIN_TOKEN=ADMIN, JOIN_ATTEMPTS_PER_MINUTE=3,
                   ADMIN_ATTEMPTS_PER_MINUTE=3, JOINS_PER_MINUTE=4, MAX_CONNECTIONS_PER_STUDENT=2,
                   MAX_CONNECTIONS_PER_ADDRESS=3, CONTROL_EVENTS_PER_MINUTE=5)
    yield app
    app.extensions["tabwrite"].scheduler.stop()


def join(app, name="Ada", code=CODE):
    browser = app.test_client()
    return browser, browser.post("/join", data={"name": name, "code": code})


def socket_for(app, browser):
    return app.extensions["socketio"].test_client(app, flask_test_client=browser)


def test_wrong_admin_tokens_never_lock_the_class_code(class_app):
    stranger = class_app.test_client()
    answers = [stranger.post("/admin/login", data={"token": f"guess{i}"}).status_code for i in range(5)]
    assert answers == [403, 403, 403, 429, 429]
    assert join(class_app)[1].status_code == 302, "the class code is a bucket of its own"
    assert stranger.post("/admin/login", data={"token": ADMIN}).status_code == 429, "the admin one stays shut"


def test_wrong_class_codes_never_lock_the_teacher_out(class_app):
    stranger = class_app.test_client()
    assert [join(class_app, code="nope")[1].status_code for _ in range(4)] == [403, 403, 403, 429]
    assert stranger.post("/admin/login", data={"token": ADMIN}).status_code == 302


def test_a_wrong_guess_waits_a_moment(tiny, monkeypatch):
    waited, sleep = [], access.time.sleep
    monkeypatch.setattr(access, "FAILED_ATTEMPT_SECONDS", 0.0123)  # told apart from anyone else's sleep
    monkeypatch.setattr(access.time, "sleep", lambda seconds: waited.append(seconds) or sleep(seconds))
    app = make_app(tiny, ACCESS_CODE=CODE, ADMIN_TOKEN=ADMIN)
    try:
        join(app, code="nope")
        app.test_client().post("/admin/login", data={"token": "nope"})
        join(app)
    finally:
        app.extensions["tabwrite"].scheduler.stop()
    assert [seconds for seconds in waited if seconds == 0.0123] == [0.0123] * 2, "wrong guesses wait, right ones never"


def test_signing_out_revokes_every_dashboard_cookie_even_a_captured_one(class_app):
    teacher = class_app.test_client()
    assert teacher.post("/admin/login", data={"token": ADMIN}).status_code == 302
    captured = teacher.get_cookie("session").value
    thief = class_app.test_client()
    thief.set_cookie("session", captured)
    assert thief.get("/admin/api/state").status_code == 200
    assert teacher.post("/admin/logout").status_code == 302
    assert thief.get("/admin/api/state").status_code == 401, "the nonce in the cookie changed"
    assert teacher.post("/admin/login", data={"token": ADMIN}).status_code == 302
    assert teacher.get("/admin/api/state").status_code == 200 and thief.get("/admin/api/state").status_code == 401


def test_a_strangers_logout_signs_nobody_out(class_app):
    teacher = class_app.test_client()
    teacher.post("/admin/login", data={"token": ADMIN})
    class_app.test_client().post("/admin/logout")
    assert teacher.get("/admin/api/state").status_code == 200


def test_joining_again_and_again_is_capped_per_address(class_app):
    assert [join(class_app, name=f"Eve {i}")[1].status_code for i in range(6)] == [302] * 4 + [429] * 2
    refused = join(class_app)[1]
    assert int(refused.headers["Retry-After"]) > 0 and b"Too many new sessions" in refused.data


def test_an_open_class_makes_guest_sessions_only_within_the_same_cap(tiny):
    app = make_app(tiny, JOINS_PER_MINUTE=2)
    try:
        pages = [app.test_client().get("/") for _ in range(3)]
        assert [page.status_code for page in pages] == [200, 200, 429]
        assert ["Set-Cookie" in page.headers for page in pages] == [True, True, False]
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_sessions_end_after_their_days_and_are_pruned(tmp_path, monkeypatch):
    store = Store(tmp_path / "db.sqlite3", session_days=30)
    token, session = store.create_session("Ada", CODE)
    guest_token, _ = store.create_session("guest", CODE, guest=True)
    named_guest_token, named_guest = store.create_session("guest", CODE)  # a student who calls themself so
    assert store.find_session(token, CODE) == session and store.find_session(guest_token, CODE) is not None
    now = time.time()
    monkeypatch.setattr("webapp.hosting.store.time.time", lambda: now + 2 * DAY_SECONDS)
    assert store.find_session(token, CODE) == session
    assert store.find_session(guest_token, CODE) is None, "a guest's session lasts a day"
    assert store.find_session(named_guest_token, CODE) == named_guest, "a name is not what makes a guest"
    monkeypatch.setattr("webapp.hosting.store.time.time", lambda: now + 31 * DAY_SECONDS)
    assert store.find_session(token, CODE) is None, "a backdated session no longer works"
    store.create_session("Ben", CODE)  # a new session prunes the expired ones
    with store._connect() as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1, "only Ben's is left"


def test_connections_are_capped_per_student_and_per_address(class_app):
    browser, _ = join(class_app)
    tabs = [socket_for(class_app, browser) for _ in range(3)]
    assert [tab.is_connected() for tab in tabs] == [True, True, False], "two tabs a student"
    other, _ = join(class_app, name="Ben")
    more = [socket_for(class_app, other) for _ in range(2)]
    assert [tab.is_connected() for tab in more] == [True, False], "three connections an address"
    tabs[0].disconnect()
    assert socket_for(class_app, other).is_connected(), "a closed tab frees its place"


def test_control_events_are_rate_limited_per_student_and_reconnecting_is_no_reset(class_app):
    browser, _ = join(class_app)
    tab = socket_for(class_app, browser)
    tab.get_received()
    for index in range(7):
        tab.emit("cancel", {"id": f"c{index}"})
    errors = [event["args"][0] for event in tab.get_received() if event["name"] == "error"]
    assert [error["code"] for error in errors] == ["rate_limited"] * 2
    tab.disconnect()
    again = socket_for(class_app, browser)
    again.get_received()
    again.emit("cancel", {"id": "x"})
    assert [event["args"][0]["code"] for event in again.get_received() if event["name"] == "error"] == [
        "rate_limited"], "a new connection of the same student counts on"
    classmate, _ = join(class_app, name="Ben")
    theirs = socket_for(class_app, classmate)
    theirs.get_received()
    theirs.emit("cancel", {"id": "y"})
    assert not [event for event in theirs.get_received() if event["name"] == "error"], "a limit per student"


def test_the_class_may_publish_only_so_many_documents(tiny):
    app = make_app(tiny, PUBLISHED_PER_CLASS=2, PUBLISHED_PER_STUDENT=5)
    try:
        authors = [app.test_client() for _ in range(3)]
        answers = [author.post("/api/publish", json={"text": "mine"}) for author in authors]
        assert [answer.status_code for answer in answers] == [201, 201, 403]
        assert "the class has published 2 documents" in answers[2].get_json()["error"]
    finally:
        app.extensions["tabwrite"].scheduler.stop()


@pytest.mark.parametrize("host, status", [("localhost", 200), ("127.0.0.1:5000", 200), ("[::1]:5000", 200),
                                          ("evil.example", 400), ("localhost.evil.example", 400)])
def test_only_allowed_host_names_are_answered(tiny, host, status):
    app = make_app(tiny, ALLOWED_HOSTS="localhost,127.0.0.1,::1")
    try:
        answer = app.test_client().get("/healthz", headers={"Host": host})
        assert answer.status_code == status
        socket = app.test_client().get("/socket.io/?EIO=4&transport=polling", headers={"Host": host})
        assert (socket.status_code == 400) == (status == 400), "the Socket.IO endpoint too"
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_behind_a_trusted_proxy_the_clients_address_scheme_and_host_are_the_proxys_word(tiny):
    app = make_app(tiny, TRUSTED_PROXIES=1, ALLOWED_HOSTS="class.example")
    try:
        forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
                     "X-Forwarded-Host": "class.example"}
        page = app.test_client().get("/", headers={"Host": "10.0.0.5:5000", **forwarded})
        assert page.status_code == 200 and "Secure" in page.headers["Set-Cookie"]
        assert app.test_client().get("/", headers={"Host": "10.0.0.5:5000"}).status_code == 400
    finally:
        app.extensions["tabwrite"].scheduler.stop()
    untrusted = make_app(tiny)
    try:
        page = untrusted.test_client().get("/", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" not in page.headers["Set-Cookie"], "without --trusted-proxies the header means nothing"
    finally:
        untrusted.extensions["tabwrite"].scheduler.stop()
