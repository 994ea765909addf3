"""The page of ``fmnist-mlp serve`` in a real browser: Debian's headless Chromium driven by
selenium. Load it, choose and drop test images, draw on the canvas, and read the top class and
the 28×28 image the model saw off the page."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from conftest import require_or_skip
from serve_helpers import Served, need, serve_work  # noqa: F401 - serve_work: a fixture

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,760"]


def chromium(profile):
    """A headless Chromium session with a fresh profile (the caller quits it)."""
    need("selenium")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        require_or_skip("Chromium and its driver are not installed (apt-get install chromium "
                        "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def page(serve_work, tmp_path_factory):
    work = serve_work
    server = Served(work["run"], cwd=work["root"])
    browser = None
    try:
        browser = chromium(tmp_path_factory.mktemp("chromium-profile"))
        browser.set_page_load_timeout(30)
        browser.get(server.url + "/")
        yield browser, work, server
    finally:
        if browser is not None:
            browser.quit()
        assert server.stop() == 0, server.stderr


def wait_for(browser, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda _: condition())


def status(browser) -> str:
    return browser.find_element("id", "status").text


def seen_pixels(browser) -> np.ndarray:
    """The 28×28 grey levels drawn on the page's "what it saw" canvas."""
    rgba = browser.execute_script(
        "return Array.from($('seen').getContext('2d').getImageData(0, 0, 28, 28).data);")
    return np.array(rgba, dtype=np.uint8).reshape(28, 28, 4)[:, :, 0]


def test_the_page_names_the_model(page):
    browser, work, _ = page
    identity = wait_for(browser, lambda: browser.find_element("id", "identity").text)
    assert "served" in identity and "test accuracy" in identity


def test_a_chosen_photo_shows_predicts_top_class_and_the_image_the_model_saw(page):
    browser, work, _ = page
    k = 3
    browser.find_element("id", "file").send_keys(str(work["pngs"][k]))
    wait_for(browser, lambda: status(browser).startswith(work["pngs"][k].name))
    top = browser.find_element("id", "top-class").text
    assert top == _class(work["predict_labels"][k])
    assert len(browser.find_elements("css selector", "#top li")) == 3
    assert np.array_equal(seen_pixels(browser), work["pixels"][k].reshape(28, 28))


def test_a_dropped_photo_is_predicted_too(page):
    browser, work, _ = page
    k = 7
    data = base64.b64encode(work["pngs"][k].read_bytes()).decode()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], {type: "image/png"}));
        $("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                                       cancelable: true}));
    """, data, "dropped.png")
    wait_for(browser, lambda: status(browser).startswith("dropped.png"))
    assert browser.find_element("id", "top-class").text == _class(work["predict_labels"][k])
    assert browser.find_element("css selector", "#drop img").get_attribute("alt") == "dropped.png"


def test_a_drawing_is_scored_as_the_28x28_image_it_is(page):
    from selenium.webdriver.common.action_chains import ActionChains

    browser, work, server = page
    canvas = browser.find_element("id", "draw")
    # a trouser-like stroke: two vertical legs
    chain = ActionChains(browser, duration=20)
    for x in (-40, 40):
        chain.move_to_element_with_offset(canvas, x, -80).click_and_hold()
        for y in range(-70, 90, 20):
            chain.move_to_element_with_offset(canvas, x, y)
        chain.release()
    chain.perform()
    drawn = np.array(browser.execute_script(
        "return Array.from($('draw').getContext('2d').getImageData(0, 0, 28, 28).data);"),
        dtype=np.uint8).reshape(28, 28, 4)[:, :, 0]
    assert drawn.max() == 255 and (drawn > 0).sum() > 20
    # each stroke asks; the last answer shows the whole drawing, white on black 28×28 as it is
    wait_for(browser, lambda: status(browser).startswith("drawing.png")
             and np.array_equal(seen_pixels(browser), drawn))
    # the class shown is the server's answer for exactly that image
    import requests

    answer = requests.post(server.url + "/invocations", timeout=30,
                           json={"inputs": drawn.reshape(1, 784).tolist()}).json()
    assert browser.find_element("id", "top-class").text == answer["predictions"][0]["class_name"]
    browser.find_element("id", "clear").click()
    assert browser.find_elements("css selector", "#top li") == []


def _class(label: int) -> str:
    from fmnist_mlp.data.facts import CLASS_NAMES

    return CLASS_NAMES[label]


def test_a_file_that_is_no_image_says_why_on_the_page(page):
    browser, work, _ = page
    browser.execute_script("""
        const transfer = new DataTransfer();
        transfer.items.add(new File(["just text"], "notes.png", {type: "image/png"}));
        $("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                                       cancelable: true}));
    """)
    wait_for(browser, lambda: status(browser).startswith("notes.png"))
    assert "not a readable image" in status(browser)
    assert browser.find_element("id", "status").get_attribute("class") == "error"
    assert browser.find_elements("css selector", "#top li") == []


def test_with_a_token_the_page_asks_for_it_and_sends_it(serve_work, tmp_path):
    from serve_helpers import ENV, TOKEN

    server = Served(serve_work["run"], cwd=serve_work["root"],
                    env={**ENV, "FMNIST_MLP_SERVE_TOKEN": TOKEN})
    browser = None
    try:
        browser = chromium(tmp_path / "profile")
        browser.get(server.url + "/")
        wait_for(browser, lambda: "needs its token" in browser.find_element("id", "identity").text)
        assert browser.find_element("id", "auth").is_displayed()
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "token-save").click()
        wait_for(browser, lambda: "served" in browser.find_element("id", "identity").text)
        browser.find_element("id", "file").send_keys(str(serve_work["pngs"][2]))
        wait_for(browser, lambda: status(browser).startswith(serve_work["pngs"][2].name))
        expected = _class(serve_work["predict_labels"][2])
        assert browser.find_element("id", "top-class").text == expected
    finally:
        if browser is not None:
            browser.quit()
        assert server.stop() == 0, server.stderr
