"""The studio at /ui in a real headless Chromium against the live stack: the whole flow on the shapes preset
(upload, train, compare, generate, play), and on the tiny preset a customization's page (the manifest's stills,
the loss charts' vertices, exports), the comparison's rows, the Generate form's fields, defaults and inline
errors, the jobs list (stage, progress, ETA, cancel), the keyboard, axe-core's accessibility check, and
screenshots at desktop and phone widths that are neither blank nor wider than the screen."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.ui.conftest import AUTH_A, open_page

pytestmark = pytest.mark.slow
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
ROWS = ["base", "naive", "still-moving", "still-moving-no-motion-adapter"]
DONE = ".status-succeeded, .status-failed, .status-canceled"


def path_of(url: str) -> str:
    return urlsplit(url).path  # presigned URLs differ in their signature, not their object


def assert_video_plays(page, selector: str, width: int = 32) -> None:
    page.wait_for_function(f"document.querySelector({selector!r}).readyState >= 2", timeout=60_000)
    assert page.evaluate(f"document.querySelector({selector!r}).videoWidth") == width
    start = page.evaluate(f"document.querySelector({selector!r}).play().then(() => 0)")
    assert start == 0
    page.wait_for_function(f"document.querySelector({selector!r}).currentTime > 0", timeout=30_000)


def screenshot_ok(path: Path) -> None:
    from PIL import Image

    pixels = Image.open(path).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100 and len(set(pixels.getdata())) > 20, path


@pytest.mark.heavy
def test_flow_upload_train_compare_generate_and_play_on_shapes(browser, shapes_api_url, shapes_checkpoint):
    page = open_page(browser, shapes_api_url)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.set_input_files("[data-field='checkpoint']", str(shapes_checkpoint))
    page.fill("[data-field='config.prompts']", "a sks red circle\na sks blue square")
    page.fill("[data-field='config.name']", "two-tone in the browser")
    page.fill("[data-field='config.num_images']", "2")
    page.fill("[data-field='config.train_steps']", "8")
    page.click("#customize-button")
    page.wait_for_selector("#studio:not([hidden]) #studio-title:has-text('two-tone in the browser')")
    page.wait_for_selector("#studio-progress progress")  # its training, live
    page.wait_for_selector("#studio-state.status-succeeded", timeout=900_000)
    assert page.locator(".gallery figure").count() == 2
    events = [url for url in requested if url.endswith("/events")]
    assert len(events) == 1, requested  # the page and the jobs list share one stream of the training job

    page.fill("#compare-form [data-field='prompt']", "a sks red circle moving right")
    page.fill("#compare-form [data-field='seed']", "1")
    page.fill("#compare-form [data-field='steps']", "3")
    page.click("#compare-button")
    page.wait_for_selector("#compare-result .comparison-row", timeout=900_000)
    assert page.eval_on_selector_all("#compare-result .comparison-row", "rows => rows.map(r => r.dataset.row)") == ROWS
    for row in ROWS:
        assert_video_plays(page, f"#compare-result [data-row='{row}'] video")

    page.click("#studio-generate")
    assert page.evaluate("document.activeElement.dataset.field") == "prompt"
    page.fill("#generate-form [data-field='prompt']", "a sks red square moving right")
    page.fill("#generate-form [data-field='steps']", "4")
    page.fill("#generate-form [data-field='seed']", "7")
    page.click("#generate-button")
    page.wait_for_selector(".job[data-kind='generate'] .job-result video", timeout=600_000)
    assert_video_plays(page, ".job[data-kind='generate'] .job-result video")
    assert not page.errors, page.errors


def test_the_gallery_shows_the_manifests_stills_with_prompts_and_seeds(browser, api_url, studio):
    customization, _, _ = studio
    page = open_page(browser, api_url, path=f"#/customizations/{customization['id']}")
    page.wait_for_selector(".gallery figure img")
    images = customization["manifest"]["images"]
    figures = page.eval_on_selector_all(".gallery figure", """figures => figures.map(f => ({
        src: f.querySelector('img').src, alt: f.querySelector('img').alt, caption: f.querySelector('figcaption').innerText}))""")
    assert len(figures) == len(images) == 2
    for figure, image, url in zip(figures, images, customization["image_urls"]):
        assert path_of(figure["src"]) == path_of(url)
        assert image["prompt"] in figure["caption"] and f"seed {image['seed']}" in figure["caption"]
        assert image["prompt"] in figure["alt"]
    page.wait_for_function("[...document.querySelectorAll('.gallery img')].every(i => i.complete && i.naturalWidth === 32)")
    assert_video_plays(page, "#preview-video")
    settings = page.inner_text(".settings-list")
    assert customization["checkpoint"]["sha256"] in settings and "Train steps" in settings


def test_the_loss_charts_have_a_vertex_per_training_step(browser, api_url, studio, settings):
    customization, _, _ = studio
    manifest = customization["manifest"]
    page = open_page(browser, api_url, path=f"#/customizations/{customization['id']}")
    page.wait_for_selector("#loss-chart polyline")
    for selector, curve in (("#loss-chart", manifest["loss_curve"]),
                            ("#motion-loss-chart", manifest["motion_adapter"]["loss_curve"])):
        points = page.get_attribute(f"{selector} polyline", "points").split()
        assert len(points) == len(curve), selector
        ys = [float(p.split(",")[1]) for p in points]
        # the lowest loss is drawn highest (SVG's y grows downwards), the highest lowest
        assert ys.index(min(ys)) == curve.index(max(curve)) and ys.index(max(ys)) == curve.index(min(curve))
        assert page.locator(f"{selector} tbody tr").count() == len(curve)
        assert f"{len(curve)} steps" in page.get_attribute(f"{selector} svg", "aria-label")
    assert len(manifest["loss_curve"]) == 5 and len(manifest["motion_adapter"]["loss_curve"]) == settings.motion_train_steps


def test_the_comparison_shows_four_looping_rows_with_their_measures(browser, api_url, studio):
    _, evaluation, _ = studio
    page = open_page(browser, api_url)
    row = f".job[data-job='{evaluation['id']}']"
    page.wait_for_selector(f"{row} .comparison-row video")
    assert page.eval_on_selector_all(f"{row} .comparison-row", "rows => rows.map(r => r.dataset.row)") == ROWS
    for shown, stored in zip(page.locator(f"{row} .comparison-row").all(), evaluation["result"]["rows"]):
        assert path_of(shown.locator("video").get_attribute("src")) == path_of(stored["video_url"])
        assert shown.locator("video").evaluate("v => v.loop && v.muted")
        text = shown.locator(".measures").inner_text()
        for value in stored["measures"].values():
            assert f"{value:.3f}" in text
    assert_video_plays(page, f"{row} [data-row='still-moving'] video")
    top = page.eval_on_selector_all(f"{row} .comparison-row", "rows => rows.map(r => r.getBoundingClientRect().top)")
    assert len(set(top)) == 1  # side by side at 1280 px


def test_generate_has_every_field_the_api_takes_with_the_servers_defaults_and_inline_errors(browser, api_url,
                                                                                          tmp_path):
    spec = httpx.get(f"{api_url}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    limits = httpx.get(f"{api_url}/limits", headers=AUTH_A).json()
    page = open_page(browser, api_url)
    names = page.eval_on_selector_all("#generate-form [data-field]", "fields => fields.map(f => f.dataset.field)")
    expected = set(schemas["GenerateRequest"]["properties"]) - {"control", "init"}
    expected |= {f"control.{n}" for n in schemas["ControlRequest"]["properties"]}
    expected |= {f"init.{n}" for n in schemas["InitRequest"]["properties"]}
    assert set(names) == expected
    for name in names:  # each control has a label that names it
        label = page.evaluate(f"document.querySelector(`#generate-form [data-field='{name}']`).labels[0].textContent")
        assert label.strip(), name
    assert page.get_attribute("[data-field='num_frames']", "placeholder") == f"default {limits['num_frames']} (the preset's)"
    assert page.get_attribute("[data-field='guidance_scale']", "placeholder") == \
        f"default {limits['guidance_scale']} (the preset's)"
    options = page.eval_on_selector_all("[data-field='scheduler'] option", "o => o.map(x => x.value)")
    assert options == ["", "ddim", "euler", "dpm++"]

    page.fill("[data-field='height']", "30")  # not a multiple of 8: the API's 422 names height
    page.click("#generate-button")
    page.wait_for_selector("[data-field='height'][aria-invalid='true']")
    error_id = page.get_attribute("[data-field='height']", "aria-describedby").split()[-1]
    assert "multiple of 8" in page.inner_text(f"#{error_id}")
    assert page.evaluate("document.activeElement.dataset.field") == "height"
    page.fill("[data-field='height']", "")
    page.fill("[data-field='num_frames']", str(limits["max_video_frames"] + 1))  # the preset's limit, not the schema's
    page.click("#generate-button")
    page.wait_for_selector("[data-field='num_frames'][aria-invalid='true']")
    assert page.locator("[data-field='height'][aria-invalid]").count() == 0
    page.fill("[data-field='num_frames']", "")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 64)
    page.check("text=Use control video")
    page.set_input_files("[data-field='control.file']", str(junk))  # POST /files refuses it: shown at the control
    page.click("#generate-button")
    page.wait_for_selector("[data-field='control.file'][aria-invalid='true']")
    assert not page.errors, page.errors


def test_jobs_list_shows_stage_progress_and_eta_and_cancels(browser, api_url, checkpoints):
    page = open_page(browser, api_url)
    page.set_input_files("[data-field='checkpoint']", str(checkpoints["lora"]))
    page.fill("[data-field='config.prompts']", "a sks toy")
    page.fill("[data-field='config.name']", "to cancel")
    page.fill("[data-field='config.num_images']", "1")
    page.fill("[data-field='config.train_steps']", "2000")
    page.click("#customize-button")
    training = page.locator(".job[data-kind='customize']", has_text="to cancel")
    training.locator(".status", has_text=re.compile(r"train \d+/2000 · about .+ left")).wait_for(timeout=120_000)
    assert 0 < training.locator("progress").evaluate("bar => bar.value") < 1
    option = page.locator("#generate-form [data-field='customization_id'] option", has_text="to cancel")
    page.select_option("#generate-form [data-field='customization_id']", option.get_attribute("value"))
    page.click("#generate-button")  # it waits for the customization
    waiting = page.locator(".job[data-kind='generate']").first
    waiting.locator(".status", has_text="queued").wait_for()
    waiting.locator("button.cancel").click()
    waiting.locator(".status-canceled").wait_for()
    training.locator("button.cancel").click()
    training.locator(".status-canceled").wait_for(timeout=60_000)
    assert training.locator("button.cancel").is_hidden() and waiting.locator("button.cancel").is_hidden()


def test_export_buttons_link_each_stored_export(browser, api_url, studio):
    customization, _, _ = studio
    page = open_page(browser, api_url, path=f"#/customizations/{customization['id']}")
    for format_ in ("diffusers", "kohya", "comfyui"):
        page.click(f".panel-export button[data-format='{format_}']")
        answer = httpx.get(f"{api_url}/customizations/{customization['id']}/export?format={format_}", headers=AUTH_A)
        assert answer.status_code == 200, answer.text
        link = page.wait_for_selector(f".export-link:has-text('{answer.json()['filename']}')")
        assert link.get_attribute("href").split("?")[0] == answer.json()["url"].split("?")[0]  # the same object
        assert answer.json()["sha256"] in page.inner_text(".export-message")


def test_keyboard_reaches_every_control_and_opens_a_customization(browser, api_url, studio):
    customization, _, _ = studio
    page = open_page(browser, api_url)
    page.wait_for_selector(f"li.customization[data-id='{customization['id']}'] a")
    page.evaluate("""() => { window.reached = new Set(); document.addEventListener('focusin', (e) =>
        window.reached.add(e.target.dataset.field || e.target.id || e.target.getAttribute('href') || '')); }""")
    page.focus("#api-key")
    for _ in range(160):
        page.keyboard.press("Tab")
    reached = set(page.evaluate("[...window.reached]"))
    for expected in ("refresh", "customize-button", "checkpoint", "config.prompts", "generate-button", "prompt",
                     f"#/customizations/{customization['id']}"):
        assert expected in reached, expected
    page.focus(f"li.customization[data-id='{customization['id']}'] a")
    page.keyboard.press("Enter")
    page.wait_for_selector("#studio:not([hidden]) .gallery img")
    page.focus("#compare-form [data-field='prompt']")
    page.keyboard.press("Enter")  # submits the comparison from the keyboard
    page.wait_for_selector("#compare-form + .compare-progress progress")


def test_axe_finds_no_serious_or_critical_violations(browser, api_url, studio):
    """axe-core's WCAG rules on the whole page: a customization open, a comparison and a video in the jobs, the
    advanced settings and the control inputs shown; at desktop width and again at phone width. (axe leaves
    `video-caption` incomplete, not violated: the videos have no sound.)"""
    customization, _, _ = studio
    page = open_page(browser, api_url, path=f"#/customizations/{customization['id']}")
    page.wait_for_selector(".gallery img")
    page.wait_for_selector(".job .comparison-row video")
    page.click("summary:has-text('More training settings')")
    page.check("text=Use control video")
    page.add_script_tag(path=str(AXE))
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        serious = [(v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:5])
                   for v in results["violations"] if v["impact"] in ("serious", "critical")]
        assert not serious, (width, serious)
        assert results["passes"], "axe ran no check"


@pytest.mark.parametrize(("width", "height"), [(1280, 1000), (390, 844)])
def test_screenshots_are_not_blank_and_nothing_is_wider_than_the_screen(browser, api_url, studio, tmp_path,
                                                                         width, height):
    customization, _, generation = studio
    page = open_page(browser, api_url, width=width, height=height, path=f"#/customizations/{customization['id']}")
    page.wait_for_selector(".gallery img")
    page.wait_for_selector("#loss-chart polyline")
    page.wait_for_selector(f".job[data-job='{generation['id']}'] video")
    page.click("summary:has-text('More training settings')")
    page.wait_for_timeout(300)  # the charts redraw at their width
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    wide = page.evaluate("""w => [...document.querySelectorAll('body *')].filter(e => {
        const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > w + 1 || r.left < -1) &&
        !e.closest('.skip, .visually-hidden');}).map(e => e.tagName + '.' + e.className).slice(0, 10)""", width)
    assert not wide, wide
    font = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.gallery figcaption')).fontSize)")
    assert font >= 12  # readable on a phone
    refresh = page.locator("#refresh").bounding_box()
    heading = page.locator("#customizations-title").bounding_box()
    assert refresh["height"] < heading["height"] * 1.2  # no longer as large as the heading it sat in
    shot = tmp_path / f"studio-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    screenshot_ok(shot)
    assert not page.errors, page.errors


def test_bad_upload_shows_the_servers_message_at_the_checkpoint(browser, api_url, tmp_path):
    before = httpx.get(f"{api_url}/customizations?limit=100", headers=AUTH_A).json()["items"]
    page = open_page(browser, api_url)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    page.set_input_files("[data-field='checkpoint']", str(junk))
    page.click("#customize-button")
    page.wait_for_function("document.querySelector('#message').textContent.includes('Upload refused')")
    assert "(field: checkpoint)" in page.inner_text("#message")
    page.wait_for_selector("[data-field='checkpoint'][aria-invalid='true']")
    error_id = page.get_attribute("[data-field='checkpoint']", "aria-describedby").split()[-1]
    assert "safetensors header" in page.inner_text(f"#{error_id}")
    after = httpx.get(f"{api_url}/customizations?limit=100", headers=AUTH_A).json()["items"]
    assert [c["id"] for c in after] == [c["id"] for c in before]  # nothing was stored or queued for it
