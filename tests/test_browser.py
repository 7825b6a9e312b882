"""The headless Chromium the page tests use (tests/browser.py): it loads a page served from a folder and runs
its script, so a page test that fails points at the page, not at the set-up."""

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from browser import console_errors, serve_folder


def test_chromium_runs_a_served_page(chromium, tmp_path):
    (tmp_path / "index.html").write_text(
        "<!doctype html><title>probe</title><pre id='result'></pre>"
        "<script>document.getElementById('result').textContent = JSON.stringify({sum: 2 + 3});</script>")
    with serve_folder(tmp_path) as url:
        chromium.get(url + "index.html")
        text = WebDriverWait(chromium, 20).until(lambda d: d.find_element(By.ID, "result").text)
    assert text == '{"sum":5}'
    assert chromium.title == "probe"
    assert console_errors(chromium) == []
