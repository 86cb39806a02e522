"""The operator console in a real browser against a real `stylecast serve` (synthetic-tiny, size 64).

Headless Chromium driven by Selenium through Debian's chromedriver: nothing is downloaded at test
time. CI needs the Debian packages `chromium` and `chromium-driver` and the Python package
`selenium`; without them the test is skipped with that reason.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml

from tests.support.service import REPO, leftover_segments, processes_using, service_env, trim_clip

TOKEN = "browser-t0ken-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    from selenium.common.exceptions import WebDriverException
    SELENIUM_MISSING = None
except ImportError:
    WebDriverException = OSError  # never raised by the predicates then: the test is skipped anyway
    SELENIUM_MISSING = "the Python package selenium is not installed (pip install -e '.[dev]')"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="headless Chromium is absent: apt-get install chromium chromium-driver"),
    pytest.mark.skipif(SELENIUM_MISSING is not None, reason=SELENIUM_MISSING or ""),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.TransportError, LookupError, ValueError, WebDriverException):  # not there yet: look again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def service(tmp_path, bikes_path):
    port = _free_port()
    config = {
        "model": {"profile": "synthetic-tiny"},
        "engine": {"size": 64, "batch": 4},
        # Small rings: fewer queued frames for the CPU "GPU" worker to drain at the end.
        "service": {"api_port": port, "runtime_dir": str(tmp_path / "rt"), "token": TOKEN, "drain_timeout_s": 5, "ring_slots": 4},
        # 40 s of paced video: the stream must still run when the test edits its prompt, however slow the machine.
        "streams": [{"name": "main", "source": str(trim_clip(Path(bikes_path), tmp_path / "main.mp4", 1000)),
                     "prompt": "make it an oil painting", "pace": True}],
    }
    (tmp_path / "stylecast.yaml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "serve.err", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--config", str(tmp_path / "stylecast.yaml")],
                                env=service_env(tmp_path / "rt"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        _wait(lambda: client.get("/readyz").status_code == 200, 120, "/readyz")
        yield client, tmp_path
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, (tmp_path / "serve.err").read_text()[-2000:]
    assert not processes_using(tmp_path / "rt") and not leftover_segments(tmp_path / "rt")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver or browser
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,1600",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _card(driver, name: str):
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(By.CSS_SELECTOR, f'article[data-stream="{name}"]')
    return cards[0] if cards else None


def _picture(img) -> np.ndarray:
    shot = cv2.imdecode(np.frombuffer(img.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.size > 0
    return shot.astype(np.int16)


def _shown(img) -> bool:
    return (img.get_attribute("src") or "").startswith("blob:") and img.get_property("naturalWidth") > 0


def test_console_lists_adds_previews_and_changes_prompts(service, browser, bikes_path) -> None:
    from selenium.webdriver.common.by import By

    client, tmp_path = service
    url = str(client.base_url)
    browser.get(f"{url}/console?token={TOKEN}")

    # The configured stream is listed, with its state and figures.
    main = _wait(lambda: _card(browser, "main"), 20, "the stream 'main' in the console")
    _wait(lambda: main.find_element(By.CSS_SELECTOR, ".state").text == "running", 30, "'main' running")
    _wait(lambda: main.find_element(By.CSS_SELECTOR, ".fps").text not in ("", "–"), 30, "an fps figure")
    assert browser.find_element(By.ID, "ready").text == "ready"

    # Add a second stream through the form.
    browser.find_element(By.ID, "add-name").send_keys("second")
    browser.find_element(By.ID, "add-source").send_keys(bikes_path)
    browser.find_element(By.ID, "add-prompt").send_keys("a watercolour")
    browser.find_element(By.ID, "add-pace").click()
    browser.find_element(By.ID, "add-submit").click()
    second = _wait(lambda: _card(browser, "second"), 60, "the added stream in the console")
    assert browser.find_element(By.ID, "add-error").text == ""
    assert client.get("/streams/second").json()["prompt"] == "a watercolour"

    # Both sides of the preview show frames, and the pictures change over time.
    for card in (main, second):
        for side in ("input", "output"):
            img = card.find_element(By.CSS_SELECTOR, f"img.preview-{side}")
            _wait(lambda img=img: _shown(img), 30, f"a {side} preview frame")
            before = _picture(img)
            _wait(lambda img=img, before=before: np.abs(_picture(img) - before).mean() > 1.0, 20, f"the {side} preview to change")

    # A prompt edit reaches the service: API prompt_version 2, and the encoder's metric at the next batch.
    from selenium.webdriver.common.keys import Keys

    prompt = main.find_element(By.CSS_SELECTOR, ".prompt-input")
    prompt.send_keys(Keys.CONTROL, "a")  # as a person would: select all, type over it (the field keeps focus)
    prompt.send_keys("a charcoal sketch")
    main.find_element(By.CSS_SELECTOR, ".prompt-apply").click()
    _wait(lambda: main.find_element(By.CSS_SELECTOR, ".prompt-version").text == "prompt v2", 20, "prompt v2 in the page")
    info = client.get("/streams/main").json()
    assert info["prompt_version"] == 2 and info["prompt"] == "a charcoal sketch"
    _wait(lambda: _metric(client.get("/metrics").text, "stylecast_prompt_version", stream="main") == 2, 30,
          "stylecast_prompt_version{stream=main} == 2")
    assert main.find_element(By.CSS_SELECTOR, ".prompt-error").text == ""

    # Nothing went wrong inside the page (a blocked script or style would be logged here).
    # (Failed loads are expected: a 503 while a stream has no frame yet.)
    errors = [e["message"] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert not errors, errors
    assert TOKEN not in (tmp_path / "serve.err").read_text()
