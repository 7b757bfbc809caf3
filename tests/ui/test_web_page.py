"""The web page at /ui in a real headless Chromium (Debian's, driven by Playwright): upload, train,
list, generate, watch progress, play the result; plus a screenshot that must not be blank."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import KEY_A

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def page(api_url):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # the page runs under its CSP (no eval); playwright's string predicates need eval, so only they bypass it
        page = browser.new_page(viewport={"width": 1200, "height": 1000}, bypass_csp=True)
        page.goto(f"{api_url}/ui/")
        page.fill("#api-key", KEY_A)
        page.dispatch_event("#api-key", "change")
        yield page
        browser.close()


def test_upload_train_generate_and_play_in_the_browser(page, checkpoints, tmp_path):
    from common.schemas import CustomizationConfig

    requested = []
    page.on("request", lambda request: requested.append(request.url))

    default = CustomizationConfig.model_fields["train_steps"].default  # shown, not sent: the server fills it
    page.wait_for_function(f"document.querySelector('#train-steps').placeholder === 'default {default}'")
    page.set_input_files("#checkpoint", str(checkpoints["unet"]))
    page.fill("#prompts", "a sks toy")
    page.fill("#name", "from the browser")
    page.fill("#num-images", "2")
    page.fill("#train-steps", "3")
    page.click("#customize-button")
    page.wait_for_selector(".job .status-succeeded, .job .status-failed, .job .status-canceled", timeout=120_000)
    assert "succeeded" in page.inner_text(".job .status"), page.inner_text("#jobs")
    followed = [url for url in requested if url.endswith("/events")]  # the live status stream, not polling:
    assert len(followed) == 1, requested
    assert requested.count(followed[0].removesuffix("/events")) <= 1, requested  # one GET, for the final record
    page.wait_for_selector("li.customization:has-text('from the browser') img", timeout=30_000)
    option = page.locator("#customization-select option", has_text="from the browser")
    page.select_option("#customization-select", option.get_attribute("value"))
    page.fill("#num-frames", "4")
    page.fill("#steps", "2")
    page.click("#generate-button")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    src = page.get_attribute("#result-video", "src")
    assert src and src.startswith("http")
    page.wait_for_function("document.querySelector('#result-video').readyState >= 2", timeout=30_000)
    assert page.evaluate("document.querySelector('#result-video').videoWidth") == 32
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100 and len(set(pixels.getdata())) > 20


def test_bad_upload_shows_the_servers_message(page, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    page.set_input_files("#checkpoint", str(junk))
    page.click("#customize-button")
    page.wait_for_function("document.querySelector('#message').textContent.includes('Upload refused')")
    assert "checkpoint" in page.inner_text("#message")
