"""The teacher's dashboard in Chromium: charts with single points, the Now card, class settings in words,
and a phone's width."""
import pytest
from browsing import admin_server as server  # noqa: F401 (a fixture)
from browsing import open_page, sign_in_as_teacher
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

INK = """(canvas) => {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;  // the series' blue and orange, not the grey grid and labels
    for (let i = 0; i < pixels.length; i += 4) {
        const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
        if (a > 100 && Math.max(r, g, b) - Math.min(r, g, b) > 80) coloured += 1;
    }
    return coloured;
}"""


@pytest.fixture
def teacher(browser, server):
    page = open_page(browser, server.url, wait_connected=False)
    sign_in_as_teacher(page, server.url)
    yield page
    assert page.errors == []
    page.context.close()


def test_a_chart_draws_points_that_stand_alone(teacher):
    ink = teacher.evaluate(f"""async () => {{
        const {{ drawLines }} = await import('/static/js/charts.js');
        const canvas = Object.assign(document.createElement('canvas'), {{ width: 320, height: 110 }});
        const ink = {INK};
        drawLines(canvas, [[null, null, 240, null, null], [null, null, null, null, 610]]);
        const alone = ink(canvas);
        drawLines(canvas, [[null, null, null, null, null]]);
        return {{ alone, empty: ink(canvas) }};
    }}""")
    assert ink["empty"] == 0 and ink["alone"] > 20, ink


def test_the_wait_chart_shows_the_first_tab(browser, server, teacher):
    student = open_page(browser, server.url)
    student.get_by_role("textbox", name="Document").fill("Dear diary, today")
    student.keyboard.press("Tab")
    student.wait_for_function("() => document.querySelectorAll('#suggestions .option.streaming').length === 0")
    teacher.wait_for_function("() => !document.querySelector('[data-figure=first_delta]').textContent.startsWith('–')")
    teacher.wait_for_function(f"() => ({INK})(document.getElementById('chart-wait')) > 20")
    label = teacher.locator("#chart-wait").get_attribute("aria-label")
    assert label.startswith("Time to first words") and "p50 ms" in label and "none yet" not in label, label
    student.context.close()


def test_the_now_card_class_settings_and_locks_read_plainly(teacher):
    align = teacher.eval_on_selector("[data-figure=connected]", "el => getComputedStyle(el).textAlign")
    assert align in ("start", "left"), align
    assert teacher.get_by_label("Options", exact=True).get_attribute("id") == "policy-n"
    assert teacher.get_by_label("Top-k", exact=True).get_attribute("id") == "policy-top_k"
    assert teacher.get_by_label("Stop at", exact=True).get_attribute("id") == "policy-stop_at"
    help_text = teacher.locator("#policy-top_k-help").inner_text()
    assert "k likeliest" in help_text and teacher.locator("#policy-top_k").get_attribute(
        "aria-describedby") == "policy-top_k-help"
    locks = teacher.get_by_role("checkbox")
    names = [teacher.evaluate("el => el.labels[0].textContent.trim()", locks.nth(i).element_handle())
             for i in range(locks.count())]
    assert len(names) == 9 and len(set(names)) == 9, names
    assert teacher.get_by_role("checkbox", name="lock Temperature").count() == 1


@pytest.mark.parametrize("width", [360, 390, 800])
def test_the_dashboard_fits_a_phone(browser, server, width):
    page = open_page(browser, server.url, wait_connected=False, viewport={"width": width, "height": 844})
    sign_in_as_teacher(page, server.url)
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    if width == 390:
        page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)
    assert page.errors == []
    page.context.close()
