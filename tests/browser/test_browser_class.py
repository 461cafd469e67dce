"""A class in Chromium: joining, the teacher's dashboard and locks, the busy message, a server restart."""
import pytest
from browsing import open_page, option_texts, set_settings, wait_until_done, write
from conftest import ARTIFACTS, Recorder, RunningServer

pytestmark = pytest.mark.browser

CODE = "maple-19"
ADMIN = "teacher-token-for-browser-tests"


@pytest.fixture(scope="module")
def class_server(embedded):
    """The embedded model behind a class code, with room for one request at a time (to show `busy`)."""
    server = RunningServer("embedded", {"TABWRITE_MAX_QUEUE": "1"},
                           args=["--access-code", CODE, "--admin-token", ADMIN]).wait_ready()
    yield server
    server.stop()


def joined_page(browser, server, name):
    page = open_page(browser, server.url, wait_connected=False)
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Class code").fill(CODE)
    page.get_by_role("button", name="Join").click()
    page.locator("#status .status-connection[data-state=connected]").wait_for()
    return page


def teacher_page(browser, server):
    page = open_page(browser, server.url + "/admin", wait_connected=False)
    page.get_by_label("Admin token").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    page.locator("body[data-loaded=true]").wait_for()
    return page


def test_join_with_the_class_code_then_write_and_publish(browser, class_server):
    page = open_page(browser, class_server.url, wait_connected=False)
    assert "/join" in page.url
    page.get_by_label("Your name").fill("Ada")
    page.get_by_label("Class code").fill("maple-20")
    page.get_by_role("button", name="Join").click()
    assert page.get_by_role("alert").text_content() == "That code did not work."
    page.errors.remove(next(e for e in page.errors if "HTTP 403" in e))  # the refusal, as expected
    page.get_by_label("Class code").fill(CODE)
    page.get_by_role("button", name="Join").click()
    page.locator("#status .status-connection[data-state=connected]").wait_for()
    assert page.locator(".student-name").text_content() == "Ada"
    set_settings(page, {"temperature": "0", "length": "4", "stop_at": "length"})
    write(page, "Our class trip to the museum").press("Tab")
    wait_until_done(page)
    assert len(option_texts(page)) == 3
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Publish").click()
    link = page.locator("#publish-result a")
    link.wait_for()
    published = page.context.new_page()  # the same browser: a classmate's link works with the class cookie
    assert published.goto(class_server.url + link.get_attribute("href")).status == 200
    assert published.locator(".document-text").text_content().startswith("Our class trip to the museum")
    stranger = open_page(browser, class_server.url + link.get_attribute("href"), wait_connected=False)
    assert stranger.errors == [f"HTTP 404 for {stranger.url}"], "outside the class the link shows nothing"
    assert page.errors == []
    stranger.context.close()
    page.context.close()


def test_a_locked_setting_shows_as_locked_and_binds_the_request(browser, class_server):
    student = joined_page(browser, class_server, "Grace")
    teacher = teacher_page(browser, class_server)
    try:
        teacher.locator("#policy-length").fill("5")
        teacher.locator("input[name=lock-length]").check()
        teacher.get_by_role("button", name="Save for the class").click()
        teacher.get_by_text("Saved and sent to every student.").wait_for()
        length = student.locator("#setting-length")
        student.locator("#setting-length:disabled").wait_for()
        assert length.input_value() == "5"
        assert student.locator(".setting.locked .lock-note").first.is_visible()
        student.screenshot(path=str(ARTIFACTS / "student-locked-setting.png"))
        write(student, "The river was").press("Tab")
        wait_until_done(student)
        suggest = next(f for f in student.socket_frames if f.startswith('42["suggest"'))
        assert '"length":5' in suggest
    finally:
        teacher.locator("input[name=lock-length]").uncheck()
        teacher.locator("#policy-length").fill("")
        teacher.get_by_role("button", name="Save for the class").click()
        teacher.get_by_text("Saved and sent to every student.").wait_for()
        student.locator("#setting-length:enabled").wait_for()
    assert student.errors == [] and teacher.errors == []
    student.context.close()
    teacher.context.close()


def test_a_full_server_says_busy_in_the_popup(browser, class_server):
    page = joined_page(browser, class_server, "Linus")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tabwrite_session")
    hog = Recorder(class_server.url, {"Cookie": f"tabwrite_session={cookie['value']}"})
    try:
        hog.client.emit("suggest", {"id": "hog", "text": "A very long story",
                                    "settings": {"n": 5, "length": 64, "stop_at": "length"}})
        hog.wait("delta", "hog")
        write(page, "Meanwhile").press("Tab")
        error = page.locator("#suggestions .popup-error")
        error.wait_for()
        assert error.text_content().startswith("Server busy:")
        assert "try again" in page.locator("#status .status-message").text_content()
    finally:
        hog.client.emit("cancel", {"id": "hog"})
        hog.wait("done", "hog")
        hog.close()
    assert page.errors == []
    page.context.close()


def test_the_dashboard_shows_students_figures_and_charts(browser, class_server):
    student = joined_page(browser, class_server, "Katherine")
    set_settings(student, {"temperature": "0", "length": "6", "stop_at": "length"})
    write(student, "Dear diary, today").press("Tab")
    wait_until_done(student)
    teacher = teacher_page(browser, class_server)
    row = teacher.locator("#student-rows tr", has_text="Katherine")
    row.wait_for()
    teacher.wait_for_function("() => !document.querySelector('[data-figure=first_delta]').textContent.startsWith('–')")
    assert "SmolLM2" in teacher.locator("[data-figure=model]").text_content()
    assert int(teacher.locator("[data-figure=connected]").text_content()) >= 1
    ink = teacher.evaluate("""() => {
        const canvas = document.getElementById('chart-tokens');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let blue = 0;
        for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 2] > 150 && pixels[i] < 100) blue += 1;
        return blue;
    }""")
    assert ink > 20, "the tokens-per-second line is drawn"
    assert teacher.locator(".qr svg").is_visible()
    teacher.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)  # docs/dashboard.png is a copy
    teacher.get_by_role("button", name="Disconnect Katherine").click()
    student.locator("#status .status-connection", has_text="signed out").wait_for()
    assert student.errors == [] and teacher.errors == []
    student.context.close()
    teacher.context.close()


def test_the_page_reconnects_after_a_server_restart_without_double_inserts(browser, embedded):
    server = RunningServer("embedded").wait_ready()
    page = open_page(browser, server.url)
    try:
        set_settings(page, {"temperature": "0", "length": "4", "stop_at": "length"})
        editor = write(page, "Before the restart")
        server.stop()
        page.locator("#status .status-connection[data-state=disconnected]").wait_for()
        server = RunningServer("embedded", port=server.port, database=server.database).wait_ready()
        page.locator("#status .status-connection[data-state=connected]").wait_for()
        editor.press("Tab")
        wait_until_done(page)
        [first, *_] = option_texts(page)
        page.keyboard.press("Enter")
        assert editor.input_value() == "Before the restart" + first
        page.wait_for_timeout(500)  # any late or repeated event would land now
        assert editor.input_value() == "Before the restart" + first
        assert sum(f.startswith('42["suggest"') for f in page.socket_frames) == 1
    finally:
        server.stop()
    page.errors = [e for e in page.errors if "socket.io" not in e]  # the polling attempts while it was down
    assert page.errors == []
    page.context.close()
