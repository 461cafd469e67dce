"""Joining, the teacher's sign-in, headers, publishing and class settings, through the real app.

HTTP goes through Flask's test client, Socket.IO through Flask-SocketIO's; the real
server on a loopback port is in test_hosting.py.
"""
import pytest
from conftest import make_app, payloads, wait_for

from webapp import create_app
from webapp.hosting.access import SESSION_COOKIE, ConfigError, check_secret_key

CODE = "owl-42"
ADMIN = "teacher-token-for-tests"
GREEDY = {"temperature": 0, "stop_at": "length", "length": 3}


@pytest.fixture
def class_app(tiny):
    app = make_app(tiny, ACCESS_CODE=CODE, ADMIN_TOKEN=ADMIN, JOIN_ATTEMPTS_PER_MINUTE=3)
    yield app
    app.extensions["tabwrite"].scheduler.stop()


def join(app, name="Ada", code=CODE):
    browser = app.test_client()
    response = browser.post("/join", data={"name": name, "code": code})
    return browser, response


def socket_for(app, browser):
    """A Socket.IO client that carries `browser`'s cookies, as the page's connection does."""
    client = app.extensions["socketio"].test_client(app, flask_test_client=browser)
    assert client.is_connected()
    return client


def test_with_a_code_the_editor_sends_strangers_to_the_join_form(class_app):
    page = class_app.test_client().get("/")
    assert page.status_code == 302 and page.headers["Location"] == "/join?next=/"
    form = class_app.test_client().get("/join")
    assert form.status_code == 200 and b'name="code"' in form.data and b'name="name"' in form.data


def test_the_right_code_gives_a_private_session_cookie_and_the_editor(class_app):
    browser, response = join(class_app)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie, "plain HTTP: a Secure cookie would never come back"
    page = browser.get("/")
    assert page.status_code == 200 and b"Ada" in page.data


def test_the_cookie_is_secure_over_https(class_app):
    response = class_app.test_client().post("/join", data={"name": "Ada", "code": CODE},
                                            base_url="https://class.example")
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_wrong_code_gets_a_generic_refusal_then_429(class_app):
    browser = class_app.test_client()
    answers = [browser.post("/join", data={"name": "Eve", "code": guess}) for guess in ("a", "owl", "owl-4")]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert all(b"That code did not work." in a.data and CODE.encode() not in a.data for a in answers)
    throttled = browser.post("/join", data={"name": "Eve", "code": CODE})
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert "Set-Cookie" not in throttled.headers, "even the right code waits once the address is throttled"


def test_a_name_is_required(class_app):
    _, response = join(class_app, name="   ")
    assert response.status_code == 400 and b"Choose a name" in response.data


def test_join_never_redirects_off_the_site(class_app):
    browser = class_app.test_client()
    response = browser.post("/join", data={"name": "Ada", "code": CODE, "next": "//evil.example/x"})
    assert response.headers["Location"] == "/"


def test_socket_io_refuses_a_connection_without_a_session(class_app):
    client = class_app.extensions["socketio"].test_client(class_app)
    assert not client.is_connected()
    browser, _ = join(class_app)
    assert socket_for(class_app, browser).is_connected()


def test_a_new_class_code_ends_old_sessions(class_app, tiny):
    browser, _ = join(class_app)
    database = class_app.config["DATABASE"]
    same_file_new_code = make_app(tiny, ACCESS_CODE="new-code", DATABASE=database)
    try:
        browser_cookie = browser.get_cookie(SESSION_COOKIE).value
        fresh = same_file_new_code.test_client()
        fresh.set_cookie(SESSION_COOKIE, browser_cookie)
        assert fresh.get("/").status_code == 302
    finally:
        same_file_new_code.extensions["tabwrite"].scheduler.stop()


def test_without_a_code_a_visitor_gets_a_guest_session(tiny_app):
    browser = tiny_app.test_client()
    page = browser.get("/")
    assert page.status_code == 200 and SESSION_COOKIE in page.headers["Set-Cookie"]
    assert tiny_app.test_client().get("/join").status_code == 302, "no join form without a code"


@pytest.mark.parametrize("path", ["/", "/join", "/admin/login", "/no-such-page"])
def test_security_headers_on_every_html_response(class_app, path):
    response = class_app.test_client().get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_no_page_carries_inline_script(class_app):
    browser, _ = join(class_app)
    admin = signed_in_admin(class_app)
    pages = [browser.get("/"), class_app.test_client().get("/join"), admin.get("/admin")]
    for page in pages:
        html = page.get_data(as_text=True)
        assert html.count("<script") == html.count("<script src=") + html.count('<script type="module" src=')
        assert " onclick=" not in html and " style=" not in html


def test_a_form_posted_from_another_site_is_refused(class_app):
    response = class_app.test_client().post("/join", data={"name": "Ada", "code": CODE},
                                            headers={"Origin": "http://evil.example"})
    assert response.status_code == 403


@pytest.mark.parametrize("host, key, ok", [
    ("127.0.0.1", "", True), ("0.0.0.0", "", True), ("127.0.0.1", "dev", True),
    ("0.0.0.0", "dev", False), ("0.0.0.0", "changeme-but-long-enough-to-pass-len", True),
    ("0.0.0.0", "x" * 31, False), ("0.0.0.0", "k" * 32, True),
])
def test_a_weak_secret_key_only_serves_localhost(host, key, ok):
    config = {"SECRET_KEY": key, "HOST": host}
    if ok:
        assert len(check_secret_key(config)) >= (len(key) or 32)
    else:
        with pytest.raises(ConfigError, match="too weak"):
            check_secret_key(config)


def test_an_app_with_a_weak_key_beyond_localhost_does_not_build(tiny):
    with pytest.raises(ConfigError):
        create_app({"ASYNC_MODE": "threading", "HOST": "0.0.0.0", "SECRET_KEY": "secret"}, model=tiny)


# ---- the teacher ------------------------------------------------------------------------

def signed_in_admin(app):
    admin = app.test_client()
    assert admin.post("/admin/login", data={"token": ADMIN}).status_code == 302
    return admin


def test_the_dashboard_needs_the_admin_token(class_app):
    stranger = class_app.test_client()
    assert stranger.get("/admin").headers["Location"] == "/admin/login"
    assert stranger.get("/admin/api/state").status_code == 401
    assert stranger.post("/admin/api/policy", json={}).status_code == 401
    assert stranger.post("/admin/login", data={"token": "guess"}).status_code == 403
    student, _ = join(class_app)
    assert student.get("/admin/api/state").status_code == 401, "a student's session is not the teacher's"
    admin = signed_in_admin(class_app)
    page = admin.get("/admin")
    assert page.status_code == 200 and b"<svg" in page.data and CODE.encode() in page.data


def test_the_dashboard_state_shows_students_and_figures(class_app):
    browser, _ = join(class_app, name="Grace")
    client = socket_for(class_app, browser)
    client.get_received()
    client.emit("suggest", {"id": "s", "text": "Hello", "settings": GREEDY})
    wait_for(client, "s")
    state = signed_in_admin(class_app).get("/admin/api/state").get_json()
    [grace] = state["students"]
    assert (grace["name"], grace["connections"], grace["requests"], grace["tokens"]) == ("Grace", 1, 1, 9)
    assert state["summary"]["connected"] == 1 and state["summary"]["requests_per_minute"] == 1
    assert state["summary"]["first_delta_ms"]["count"] == 1
    assert state["model"]["ready"] and state["queue"]["limit"] == 64
    assert state["memory"]["rss_mb"] > 10 and len(state["history"]) == 60


def test_the_teacher_disconnects_a_student_and_ends_the_session(class_app):
    browser, _ = join(class_app, name="Mallory")
    client = socket_for(class_app, browser)
    student_id = class_app.extensions["tabwrite.classroom"].roster()[0]["id"]
    answer = signed_in_admin(class_app).post(f"/admin/api/students/{student_id}/disconnect", json={})
    assert answer.get_json() == {"disconnected": 1}
    assert not client.is_connected()
    assert browser.get("/").status_code == 302, "the session is over: back to the join form"
    assert class_app.extensions["tabwrite.classroom"].roster() == []


def test_locked_class_settings_reach_pages_and_bind_requests(class_app):
    browser, _ = join(class_app)
    client = socket_for(class_app, browser)
    client.get_received()
    admin = signed_in_admin(class_app)
    policy = admin.post("/admin/api/policy", json={"defaults": {"length": 2, "n": 2}, "locked": ["length"]})
    assert policy.status_code == 200
    [pushed] = payloads(client.get_received(), "policy")
    assert pushed["locked"] == ["length"] and pushed["defaults"] == {"length": 2, "n": 2}
    client.emit("suggest", {"id": "s", "text": "Hello", "settings": {**GREEDY, "length": 20, "n": 1}})
    [done] = payloads(wait_for(client, "s"), "done", "s")
    assert len(done["options"]) == 1, "an unlocked default is only a default"
    assert done["stats"]["new_tokens"] == 2, "the locked length wins over the student's 20"
    bad = admin.post("/admin/api/policy", json={"defaults": {"max_time": 1}, "locked": []})
    assert bad.status_code == 400 and "max_time" in bad.get_json()["error"]


def test_class_settings_survive_a_restart(class_app, tiny):
    signed_in_admin(class_app).post("/admin/api/policy", json={"defaults": {"top_k": 7}, "locked": ["top_k"]})
    again = make_app(tiny, ACCESS_CODE=CODE, DATABASE=class_app.config["DATABASE"])
    try:
        assert again.extensions["tabwrite.classroom"].policy.to_payload()["locked"] == ["top_k"]
    finally:
        again.extensions["tabwrite"].scheduler.stop()


# ---- limits --------------------------------------------------------------------------------

def test_a_student_over_the_rate_limit_gets_rate_limited(tiny):
    app = make_app(tiny, REQUESTS_PER_MINUTE=3)
    try:
        client = socket_for(app, app.test_client())
        client.get_received()
        for i in range(3):
            client.emit("suggest", {"id": f"ok{i}", "text": "Hi", "settings": GREEDY})
            wait_for(client, f"ok{i}")
        client.emit("suggest", {"id": "over", "text": "Hi", "settings": GREEDY})
        [error] = payloads(wait_for(client, "over", event="error"), "error", "over")
        assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 60
        client.emit("cancel", {"id": "ok0"})  # cancelling is never limited
        assert payloads(client.get_received(), "error") == []
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_the_limit_is_per_student_not_per_connection(tiny):
    app = make_app(tiny, REQUESTS_PER_MINUTE=2)
    try:
        browser = app.test_client()
        browser.get("/")  # the guest cookie
        tab1, tab2 = socket_for(app, browser), socket_for(app, browser)
        tab1.emit("suggest", {"id": "a", "text": "Hi", "settings": GREEDY})
        wait_for(tab1, "a")
        tab2.emit("suggest", {"id": "b", "text": "Hi", "settings": GREEDY})
        wait_for(tab2, "b")
        tab2.emit("suggest", {"id": "c", "text": "Hi", "settings": GREEDY})
        assert payloads(wait_for(tab2, "c", event="error"), "error", "c")[0]["code"] == "rate_limited"
        other = socket_for(app, app.test_client())
        other.emit("suggest", {"id": "d", "text": "Hi", "settings": GREEDY})
        wait_for(other, "d")
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_caps_on_options_and_length(tiny):
    app = make_app(tiny, MAX_OPTIONS=2, MAX_LENGTH=8)
    try:
        client = socket_for(app, app.test_client())
        client.emit("suggest", {"id": "n", "text": "Hi", "settings": {"n": 3}})
        client.emit("suggest", {"id": "len", "text": "Hi", "settings": {"length": 9}})
        errors = {e["id"]: e for e in payloads(wait_for(client, "len", event="error"), "error")}
        assert errors["n"]["field"] == "settings.n" and "at most 2" in errors["n"]["message"]
        assert errors["len"]["field"] == "settings.length"
        page = app.test_client().get("/").get_data(as_text=True)
        assert 'name="n" min="1"\n                 max="2"' in page, "the page's slider stops at the cap"
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_a_full_queue_answers_busy_with_a_retry_hint(embedded):
    app = make_app(embedded, MAX_QUEUE=1)
    try:
        first, second = socket_for(app, app.test_client()), socket_for(app, app.test_client())
        first.emit("suggest", {"id": "long", "text": "Once", "settings": {"length": 64, "stop_at": "length"}})
        wait_for(first, "long", event="delta")
        second.emit("suggest", {"id": "late", "text": "Hi"})
        [error] = payloads(wait_for(second, "late", event="error"), "error", "late")
        assert error["code"] == "busy" and error["retry_after"] > 0
        first.emit("cancel", {"id": "long"})
        wait_for(first, "long")
        second.emit("suggest", {"id": "retry", "text": "Hi", "settings": GREEDY})
        wait_for(second, "retry")
    finally:
        app.extensions["tabwrite"].scheduler.stop()


# ---- published documents -------------------------------------------------------------------

def test_publish_makes_a_read_only_link_for_the_class(class_app):
    browser, _ = join(class_app, name="Ada")
    answer = browser.post("/api/publish", json={"text": "The <b>cat</b> sat.", "settings": {"n": 2, "top_k": 9}})
    assert answer.status_code == 201
    url = answer.get_json()["url"]
    classmate, _ = join(class_app, name="Bob")
    page = classmate.get(url)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "The &lt;b&gt;cat&lt;/b&gt; sat." in html and "tiny-gpt2" in html and "top-k 9" in html
    assert class_app.test_client().get(url).status_code == 404, "strangers see nothing"
    assert signed_in_admin(class_app).get(url).status_code == 200
    assert classmate.get("/d/not-a-real-id").status_code == 404
    assert classmate.post(url).status_code == 405, "read-only"


def test_publish_refuses_bad_and_oversized_documents(tiny):
    app = make_app(tiny, PUBLISH_MAX_CHARS=100, PUBLISHED_PER_STUDENT=2)
    try:
        browser = app.test_client()
        assert browser.post("/api/publish", json={"text": "x" * 101}).status_code == 413
        assert browser.post("/api/publish", json={"text": "  "}).status_code == 400
        assert browser.post("/api/publish", data="text=hi").status_code == 400
        assert browser.post("/api/publish", json={"text": "hi", "settings": {"n": 99}}).status_code == 400
        assert [browser.post("/api/publish", json={"text": "hi"}).status_code for _ in range(3)] == [201, 201, 403]
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_published_documents_survive_a_restart(class_app, tiny):
    browser, _ = join(class_app)
    url = browser.post("/api/publish", json={"text": "Kept."}).get_json()["url"]
    restarted = make_app(tiny, ACCESS_CODE=CODE, DATABASE=class_app.config["DATABASE"])
    try:
        reader = restarted.test_client()
        reader.set_cookie(SESSION_COOKIE, browser.get_cookie(SESSION_COOKIE).value)
        assert "Kept." in reader.get(url).get_data(as_text=True)
    finally:
        restarted.extensions["tabwrite"].scheduler.stop()


def test_a_publish_from_a_stranger_in_a_class_with_a_code_is_refused(class_app):
    assert class_app.test_client().post("/api/publish", json={"text": "spam"}).status_code == 401


def test_one_request_in_flight_per_student_across_tabs(embedded):
    app = make_app(embedded)
    try:
        browser = app.test_client()
        browser.get("/")
        tab1, tab2 = socket_for(app, browser), socket_for(app, browser)
        tab1.emit("suggest", {"id": "long", "text": "Once", "settings": {"length": 64, "stop_at": "length"}})
        wait_for(tab1, "long", event="delta")
        tab2.emit("suggest", {"id": "new", "text": "Hi", "settings": GREEDY})
        [stopped] = payloads(wait_for(tab1, "long"), "done", "long")
        assert set(stopped["finish"]) == {"cancelled"}, "the student's newer request replaced the older one"
        wait_for(tab2, "new")
    finally:
        app.extensions["tabwrite"].scheduler.stop()


def test_a_student_whose_tabs_closed_stays_listed_for_a_while_and_comes_back_to_the_same_row(class_app, monkeypatch):
    from webapp.hosting import classroom as classroom_module

    browser, _ = join(class_app, name="Hedy")
    client = socket_for(class_app, browser)
    client.emit("suggest", {"id": "s", "text": "Hello", "settings": GREEDY})
    wait_for(client, "s")
    client.disconnect()
    [hedy] = signed_in_admin(class_app).get("/admin/api/state").get_json()["students"]
    assert (hedy["name"], hedy["connections"], hedy["requests"]) == ("Hedy", 0, 1) and hedy["left"] > 0
    again = socket_for(class_app, browser)
    [back] = class_app.extensions["tabwrite.classroom"].roster()
    assert (back["connections"], back["requests"], back["left"]) == (1, 1, None), "the same row, counts kept"
    again.disconnect()
    monkeypatch.setattr(classroom_module, "RECENT_SECONDS", 0)
    assert class_app.extensions["tabwrite.classroom"].roster() == [], "forgotten once the while is over"
