"""The page at / in a real headless browser: Debian's chromium, driven through chromedriver's
WebDriver protocol (plain HTTP on loopback, so no driver library is needed). The page loads, text is
typed, the request round-trips, and the result appears. Skipped where chromium is not installed
(apt-get install chromium chromium-driver)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bertkit.serve.settings import ServeArgs
from tests.serve.conftest import NEEDS_SERVE, ServerThread, free_port

pytest.importorskip("uvicorn", reason=NEEDS_SERVE)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver)")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the WebDriver spec's key for an element reference


class Browser:
    """One headless chromium session through chromedriver on a free loopback port."""

    def __init__(self, profile: Path):
        import httpx

        self.port = free_port()
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        self._wait(lambda: self._ready(), 30, "chromedriver did not start")
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={profile}", "--window-size=1000,900"]
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]

    def _ready(self) -> bool:
        import httpx

        try:
            return self.http.get("/status").json()["value"]["ready"]
        except (httpx.TransportError, ValueError, KeyError):
            return False

    def _call(self, method: str, path: str, body: dict | None = None):
        r = self.http.request(method, path, json=body)
        value = r.json()["value"]
        if r.status_code != 200:
            raise AssertionError(f"WebDriver {method} {path}: {value}")
        return value

    def _wait(self, ready, seconds: float, message: str):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(message)

    def at(self, path: str):
        return self._call("POST", f"/session/{self.session}/{path}", {})

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def type(self, css: str, text: str) -> None:
        element = self._call("POST", f"/session/{self.session}/element", {"using": "css selector", "value": css})
        self._call("POST", f"/session/{self.session}/element/{element[ELEMENT]}/value", {"text": text})

    def click(self, css: str) -> None:
        element = self._call("POST", f"/session/{self.session}/element", {"using": "css selector", "value": css})
        self._call("POST", f"/session/{self.session}/element/{element[ELEMENT]}/click", {})

    def wait_for(self, script: str, seconds: float = 30):
        return self._wait(lambda: self.js(script), seconds, f"never true: {script}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            self.http.delete(f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(10)
            self.http.close()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def shot(browser: Browser, tmp_path: Path, name: str) -> None:
    """A screenshot beside the test's files (and in $BERTKIT_SCREENSHOTS when set, to look at)."""
    browser.screenshot(tmp_path / name)
    if os.environ.get("BERTKIT_SCREENSHOTS"):
        shutil.copy(tmp_path / name, Path(os.environ["BERTKIT_SCREENSHOTS"]) / name)


def test_the_page_finds_the_nearest_example_sentences(browser, minilm_dir, tmp_path):
    with ServerThread(ServeArgs(model=str(minilm_dir), port=free_port())) as server:
        browser.open(server.url + "/")
        model = browser.wait_for("const t = document.getElementById('model').textContent;"
                                 "return t.includes('embed') ? t : null")
        assert "(embed)" in model
        browser.type("#text", "Somebody plays an acoustic guitar")
        browser.click("#run")
        rows = browser.wait_for("const a = document.querySelector('#answer');"
                                "return a ? [...a.querySelectorAll('.row .name')].map(e => e.textContent) : null")
        shot(browser, tmp_path, "page-embed.png")
    assert len(rows) == 12
    assert {rows[0], rows[1]} == {"A man is playing a guitar.", "Someone is strumming a guitar on stage."}


def test_the_page_highlights_the_answer_in_the_context(browser, task_model, tmp_path):
    context = "Mary visited Paris in the spring and John stayed home in Berlin."
    with ServerThread(ServeArgs(model=str(task_model("qa")), port=free_port())) as server:
        browser.open(server.url + "/")
        browser.wait_for("return document.getElementById('model').textContent.includes('(qa)')")
        assert browser.js("return !document.getElementById('second').classList.contains('hidden')")
        browser.type("#text", "Where did Mary go?")
        browser.type("#text2", context)
        browser.click("#run")
        result = browser.wait_for("const a = document.querySelector('#answer'); if (!a) return null;"
                                  "const m = a.querySelector('mark');"
                                  "return [a.querySelector('p').textContent, m ? m.textContent : null,"
                                  "        a.querySelector('.text').textContent]")
        shot(browser, tmp_path, "page-qa.png")
    said, marked, shown = result
    assert shown == context  # the whole context, with the answer marked inside it
    assert marked and said == f"Answer: {marked} (score {said.rsplit('score ', 1)[1]}" and marked in context


def test_the_page_shows_label_scores(browser, task_model):
    with ServerThread(ServeArgs(model=str(task_model("classify")), port=free_port())) as server:
        browser.open(server.url + "/")
        browser.wait_for("return document.getElementById('model').textContent.includes('neg, pos')")
        browser.type("#text", "What a wonderful day!")
        browser.click("#run")
        names = browser.wait_for("const a = document.querySelector('#answer');"
                                 "return a ? [...a.querySelectorAll('.row .name')].map(e => e.textContent) : null")
    assert sorted(names) == ["neg", "pos"]


def test_the_page_asks_for_the_api_key(browser, minilm_dir):
    with ServerThread(ServeArgs(model=str(minilm_dir), port=free_port(), api_key="k3y")) as server:
        browser.open(server.url + "/")
        status = browser.wait_for("return document.getElementById('status').textContent")
        assert "API key" in status
        assert browser.js("return !document.getElementById('keybox').classList.contains('hidden')")
        browser.type("#apikey", "k3y")
        browser.js("document.getElementById('apikey').dispatchEvent(new Event('change'))")
        browser.wait_for("return document.getElementById('model').textContent.includes('(embed)')")
        browser.type("#text", "guitar music")
        browser.click("#run")
        assert browser.wait_for("return document.querySelectorAll('#answer .row').length") == 12


def test_the_page_highlights_entities(browser, task_model):
    import httpx

    text = "John Smith lives in New York ."
    with ServerThread(ServeArgs(model=str(task_model("tag")), port=free_port())) as server:
        entities = httpx.post(f"{server.url}/predict", json={"inputs": text}).json()["entities"]
        browser.open(server.url + "/")
        browser.wait_for("return document.getElementById('model').textContent.includes('(tag')")
        browser.type("#text", text)
        browser.click("#run")
        plain, marks = browser.wait_for(
            "const a = document.querySelector('#answer .text'); if (!a) return null;"
            "const marks = [...a.querySelectorAll('mark')].map(m => [m.firstChild.textContent,"
            "                                                        m.querySelector('small').textContent]);"
            "const copy = a.cloneNode(true); copy.querySelectorAll('small').forEach(s => s.remove());"
            "return [copy.textContent, marks]")
    assert entities  # the tiny model's random head tags something
    assert marks == [[e["text"], e["type"]] for e in entities]  # each entity marked, with its type
    assert plain == text  # inside the whole text
