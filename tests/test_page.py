"""The chat page at ``/`` in a real browser (headless Chromium through Selenium) against
``expo-gguf serve`` on the real SmolLM2 model: streaming, Stop, regenerate, edit, the kept
conversations, a probe that would run if text were markup, no request to another host, the API
key. The screenshot in docs/chat-page.png is taken here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from page_stub import StubServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]  # one Chromium and server per run

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PROBE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
# EXPO_PAGE_STUB=1: the stand-in in page_stub.py instead of the model (seconds, for work on the page)
REAL_SERVER = os.environ.get("EXPO_PAGE_STUB") != "1"


# ---------- the browser ----------


def _browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return " and ".join(missing) + " not found (apt-get install chromium chromium-driver)" if missing else None


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    """One headless Chromium for the module; in CI a browser that cannot start fails the tests."""
    why = _browser_missing()
    if why and not os.environ.get("CI"):
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager downloads nothing: both paths are given

    profile = tempfile.mkdtemp(prefix="page-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--lang=en-US",
        "--window-size=1100,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        d = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except Exception as e:  # noqa: BLE001 - any failure to start is the same failure to the user
        pytest.fail(f"headless Chromium did not start: {e}")
    d.set_script_timeout(20)
    d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


# ---------- the server ----------


@contextmanager
def serve(tmp: Path, api_key: str | None = None) -> Iterator[str]:
    """``expo-gguf serve SmolLM2`` on a free port with its own conversation store (or the stand-in
    in page_stub.py); yields its base URL."""
    if not REAL_SERVER:
        with StubServer(api_key) as stub:
            yield stub.url
        return
    from conftest import smollm2

    port = free_port()
    cmd = [sys.executable, "-c", "from expo_gguf.cli import main; main()", "serve", str(smollm2())]
    cmd += ["--port", str(port), "--threads", "1", "-ngl", "0"]  # the CPU's pace: a reply long enough to stop
    cmd += ["--api-key", api_key] if api_key else []
    env = {**os.environ, "EXPO_GGUF_LOGS_DB": str(tmp / "logs.db")}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urlopen(url + "/api/info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail("expo-gguf serve did not start:\n" + (tmp / "serve.log").read_text(errors="replace"))
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("serve")) as url:
        yield url


def get_json(url: str, key: str | None = None) -> object:
    req = Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urlopen(req, timeout=10) as r:
        return json.loads(r.read())


# ---------- driving the page ----------


def wait(d: object, what: Callable[[], object], timeout: float = 30, msg: str = "") -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.05).until(lambda _: what(), msg)


def js(d: object, script: str, *args: object) -> object:
    return d.execute_script(script, *args)  # type: ignore[attr-defined]


def open_page(d: object, url: str) -> None:
    d.get(url + "/")  # type: ignore[attr-defined]
    wait(d, lambda: js(d, "return document.readyState") == "complete" and js(d, "return !!window.expoMarkdown"))


def messages(d: object) -> list[dict[str, str]]:
    """The thread as shown: role, text of the body, the stats line, and whether it is still streaming."""
    return js(  # type: ignore[return-value]
        d,
        """return [...document.querySelectorAll('#messages > li')].map(li => ({
            role: li.classList.contains('user') ? 'user' : 'assistant',
            text: (li.querySelector('.body') || {}).textContent || '',
            meta: (li.querySelector('.stats') || {}).textContent || '',
        }))""",
    )


def idle(d: object) -> bool:
    return bool(js(d, "return !document.body.classList.contains('busy')"))


def type_and_send(d: object, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = d.find_element(By.ID, "input")  # type: ignore[attr-defined]
    box.click()
    js(
        d,
        "const i = document.getElementById('input'); i.value = arguments[0]; i.dispatchEvent(new Event('input'))",
        text,
    )
    box.send_keys(Keys.ENTER)


def ask(d: object, text: str, timeout: float = 60) -> dict[str, str]:
    """Send ``text`` and wait for the whole reply; the reply as shown."""
    n = len(messages(d))
    type_and_send(d, text)
    wait(d, lambda: len(messages(d)) >= n + 2 and idle(d), timeout, f"no reply to {text!r}")
    return messages(d)[-1]


def click(d: object, css: str) -> None:
    from selenium.webdriver.common.by import By

    d.find_element(By.CSS_SELECTOR, css).click()  # type: ignore[attr-defined]


def new_chat(d: object, url: str, max_tokens: int | None = 40) -> None:
    """The page afresh, nothing kept in the browser; replies bounded by the page's "Longest reply"
    setting (SmolLM2 can ramble for a thousand tokens)."""
    open_page(d, url)
    js(d, "sessionStorage.clear(); localStorage.clear()")
    if max_tokens:
        js(d, "localStorage.setItem('expo-gguf.max-tokens', arguments[0])", str(max_tokens))
    open_page(d, url)


# ---------- the tests ----------


def test_send_streams_an_answer_with_its_figures(driver: object, server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    new_chat(driver, server, max_tokens=120)
    box = driver.find_element(By.ID, "input")  # type: ignore[attr-defined]
    box.send_keys("first line", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "second line")
    assert box.get_attribute("value") == "first line\nsecond line"
    assert messages(driver) == []  # Shift+Enter is a new line, not a send
    box.send_keys(Keys.CONTROL, "a", Keys.CONTROL, Keys.BACKSPACE)
    seen: list[int] = []
    type_and_send(driver, "What is the capital of France?")
    # the reply grows while it streams: its length is seen at least twice, different
    wait(driver, lambda: seen.append(len(messages(driver)[-1]["text"])) or idle(driver), 60)
    shown = messages(driver)
    assert [m["role"] for m in shown] == ["user", "assistant"]
    assert shown[0]["text"] == "What is the capital of France?"
    assert shown[1]["text"].strip()
    assert len({n for n in seen if n}) >= 2, seen
    assert "tokens/s" in shown[1]["meta"] and "context " in shown[1]["meta"], shown[1]["meta"]
    assert driver.find_element(By.ID, "stop").is_displayed() is False  # type: ignore[attr-defined]


def test_stop_ends_the_reply_marked_interrupted(driver: object, server: str) -> None:
    new_chat(driver, server, max_tokens=None)
    type_and_send(driver, "Write a long story about a dragon, with many chapters. Make it long.")
    wait(driver, lambda: len(messages(driver)) == 2 and len(messages(driver)[1]["text"]) > 20, 60)
    click(driver, "#stop")
    wait(driver, lambda: idle(driver), 10, "Stop did not end the reply")
    reply = messages(driver)[1]
    assert "interrupted" in reply["meta"]
    time.sleep(0.5)
    assert messages(driver)[1]["text"] == reply["text"]  # nothing more arrives
    cid = js(driver, "return document.querySelector('#conv-list .current')?.dataset.id")
    assert cid

    def kept_cut() -> object:
        replies = [m for m in get_json(f"{server}/api/conversations/{cid}")["messages"] if m["role"] == "assistant"]  # type: ignore[index]
        return replies and replies[-1]["cut"]

    wait(driver, lambda: kept_cut() == "interrupted", 10, "the server did not keep the stopped reply as interrupted")
    # the page can go on at once
    js(driver, "const m = document.getElementById('max-tokens'); m.value = '20'; m.dispatchEvent(new Event('input'))")
    assert ask(driver, "echo thanks")["text"].strip()


def test_regenerate_replaces_the_last_reply(driver: object, server: str) -> None:
    new_chat(driver, server)
    js(driver, "document.getElementById('temperature').value = '1.5'")
    ask(driver, "Tell me a one-line joke.")
    click(driver, "#messages > li:last-child .regen")
    wait(driver, lambda: idle(driver), 60)
    shown = messages(driver)
    assert [m["role"] for m in shown] == ["user", "assistant"]
    assert shown[1]["text"].strip() and "tokens/s" in shown[1]["meta"]
    cid = js(driver, "return document.querySelector('#conv-list .current')?.dataset.id")
    assert cid
    kept = get_json(f"{server}/api/conversations/{cid}")
    assert isinstance(kept, dict)
    replies = [m for m in kept["messages"] if m["role"] == "assistant"]
    assert len(replies) == 2 and replies[0].get("replaced") and not replies[1].get("replaced"), replies
    assert replies[1]["content"].strip()


def test_edit_an_earlier_message_resends_from_there(driver: object, server: str) -> None:
    new_chat(driver, server)
    ask(driver, "echo apples")
    ask(driver, "echo pears")
    assert len(messages(driver)) == 4
    click(driver, "#messages > li:first-child .edit")
    area = driver.find_element("css selector", ".edit-box textarea")  # type: ignore[attr-defined]
    assert area.get_attribute("value") == "echo apples"
    area.clear()
    area.send_keys("echo plums")
    click(driver, ".edit-box .save-edit")
    wait(driver, lambda: idle(driver) and len(messages(driver)) == 2, 60)
    shown = messages(driver)
    assert shown[0]["text"] == "echo plums" and shown[1]["text"].strip()


def test_a_refused_request_is_shown_and_the_chat_goes_on(driver: object, server: str) -> None:
    new_chat(driver, server)
    type_and_send(driver, "word " * 5000)
    wait(driver, lambda: len(messages(driver)) == 2 and idle(driver), 30)
    error = js(driver, "return document.querySelector('#messages > li.error .body')?.textContent")
    assert error and "context" in error, error
    click(driver, "#messages > li:first-child .edit")
    area = driver.find_element("css selector", ".edit-box textarea")  # type: ignore[attr-defined]
    area.clear()
    area.send_keys("echo shorter")
    click(driver, ".edit-box .save-edit")
    wait(driver, lambda: idle(driver) and len(messages(driver)) == 2, 60)
    assert messages(driver)[1]["text"].strip() and "tokens/s" in messages(driver)[1]["meta"]


def test_reload_reopens_and_continues_a_kept_conversation(driver: object, server: str) -> None:
    new_chat(driver, server)
    first = ask(driver, "Name a colour.")
    driver.refresh()  # type: ignore[attr-defined]
    wait(driver, lambda: js(driver, "return document.querySelectorAll('#conv-list .conv').length") > 0, 10)
    assert messages(driver) == []
    top = js(driver, "return document.querySelector('#conv-list .conv .first').textContent")
    assert top == "Name a colour."  # newest first
    click(driver, "#conv-list .conv .open")
    wait(driver, lambda: len(messages(driver)) == 2, 10)
    assert messages(driver)[1]["text"].strip() == first["text"].strip()
    cid = js(driver, "return document.querySelector('#conv-list .current').dataset.id")
    ask(driver, "Name another one.")
    listed = get_json(f"{server}/api/conversations?n=50")
    assert isinstance(listed, list)
    assert listed[0]["id"] == cid and listed[0]["turns"] == 2, listed[0]


def test_a_probe_is_shown_as_text_and_never_runs(driver: object, server: str) -> None:
    new_chat(driver, server)
    ask(driver, PROBE)
    assert messages(driver)[0]["text"] == PROBE
    assert js(driver, "return typeof window.__pwned") == "undefined"
    assert js(driver, "return document.querySelectorAll('#messages img, #messages script').length") == 0
    # the renderer with a hostile reply: markup stays text, only http(s) links are anchors
    hostile = (
        PROBE + "\n\n# Title *it* **bold** `<b>x</b>`\n\n- [ok](https://example.org) [bad](javascript:alert(1))\n"
        "- ![i](x) <a href=javascript:alert(1)>a</a>\n\n```html\n<script>window.__pwned=3</script>\n```\n"
        "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | 2 |\n"
    )
    shape = js(
        driver,
        """const box = document.createElement('div'); document.body.append(box);
        window.expoMarkdown(arguments[0], box);
        const out = {
          tags: [...box.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
          links: [...box.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.rel, a.textContent]),
          code: box.querySelector('pre code').textContent, copy: !!box.querySelector('.code .copy'),
          text: box.textContent};
        box.remove(); return out;""",
        hostile,
    )
    assert isinstance(shape, dict)
    assert not {"img", "script", "iframe", "b"} & set(shape["tags"]), shape["tags"]
    assert {"h1", "em", "strong", "code", "ul", "li", "pre", "table", "td"} <= set(shape["tags"]), shape["tags"]
    assert shape["links"] == [["https://example.org/", "noopener noreferrer", "ok"]], shape["links"]
    assert shape["code"] == "<script>window.__pwned=3</script>" and shape["copy"]
    assert "<img src=x onerror=alert(1)>" in shape["text"] and "javascript:alert(1)" in shape["text"]
    assert js(driver, "return typeof window.__pwned") == "undefined"


def test_the_page_asks_no_other_host(driver: object, server: str) -> None:
    driver.get_log("performance")  # type: ignore[attr-defined]  # drop what earlier tests fetched
    driver.get_log("browser")  # type: ignore[attr-defined]  # and what they logged
    new_chat(driver, server)
    ask(driver, "Write a link to the Python docs in markdown, and a code block.")
    click(driver, "#conv-list .conv .open")
    wait(driver, lambda: idle(driver) and len(messages(driver)) == 2, 10)
    fetched = js(
        driver,
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]",
    )
    assert isinstance(fetched, list)
    requested = [
        json.loads(e["message"])["message"]["params"]["request"]["url"]
        for e in driver.get_log("performance")  # type: ignore[attr-defined]
        if '"Network.requestWillBeSent"' in e["message"]
    ]
    urls = set(fetched) | set(requested)
    assert f"{server}/page/app.js" in urls and f"{server}/v1/chat/completions" in urls, urls
    others = {u for u in urls if not u.startswith(server + "/") and not u.startswith("data:")}
    assert not others, others
    logged = driver.get_log("browser")  # type: ignore[attr-defined]
    assert not [e for e in logged if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]], logged


def test_phone_width_is_one_column(driver: object, server: str) -> None:
    from selenium.webdriver.common.by import By

    new_chat(driver, server)
    phone = {"width": 380, "height": 760, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)  # type: ignore[attr-defined]
    try:
        assert js(driver, "return window.innerWidth") == 380
        ask(driver, "echo a fairly wide line of text that has to wrap at the width of a phone screen, " * 3)
        width = js(driver, "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert isinstance(width, list) and width[0] <= width[1], width
        side = driver.find_element(By.ID, "sidebar")  # type: ignore[attr-defined]
        wait(driver, lambda: side.rect["x"] + side.rect["width"] <= 0, 5, "the list is not off screen")
        click(driver, "#open-side")
        wait(driver, lambda: side.rect["x"] >= 0, 5)
        click(driver, "#conv-list .conv .open")
        wait(driver, lambda: side.rect["x"] + side.rect["width"] <= 0, 5)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})  # type: ignore[attr-defined]


def test_the_key_is_asked_once_and_again_after_a_401(driver: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with serve(tmp_path, api_key="sesame") as url:
        new_chat(driver, url)

        def asked() -> bool:
            return bool(js(driver, "return document.getElementById('key-dialog').open"))

        wait(driver, asked, 10, "no key asked")
        driver.find_element(By.ID, "key-input").send_keys("sesame")  # type: ignore[attr-defined]
        click(driver, "#key-ok")
        wait(driver, lambda: not asked(), 5)
        assert js(driver, "return sessionStorage.getItem('expo-gguf.api-key')") == "sesame"
        assert ask(driver, "echo hello")["text"].strip()
        # a reload keeps the key for the tab; a refused key asks again and the request goes through
        js(driver, "sessionStorage.setItem('expo-gguf.api-key', 'wrong')")
        open_page(driver, url)
        wait(driver, asked, 10, "a refused key was not asked again")
        assert "refused" in driver.find_element(By.ID, "key-why").text  # type: ignore[attr-defined]
        driver.find_element(By.ID, "key-input").send_keys("sesame")  # type: ignore[attr-defined]
        click(driver, "#key-ok")
        wait(driver, lambda: js(driver, "return document.querySelectorAll('#conv-list .conv').length") == 1, 10)


def test_screenshot_mid_conversation(driver: object, server: str, tmp_path: Path) -> None:
    """The page at 1100x800, light theme, a conversation with markdown. The one in the docs:
    ``EXPO_PAGE_SCREENSHOT=1 pytest tests/test_page.py -k screenshot`` (alone, so the side list
    holds this conversation only) writes docs/chat-page.png."""
    new_chat(driver, server, max_tokens=320)
    js(driver, "localStorage.setItem('expo-gguf.temperature', '0')")
    open_page(driver, server)
    metrics = {"width": 1100, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # type: ignore[attr-defined]
    ask(driver, "How do I read a file line by line in Python? Show a short example.")
    ask(driver, "And how do I count the lines?")
    js(driver, "document.activeElement.blur(); document.querySelector('#messages > li:nth-child(3)').scrollIntoView()")
    js(driver, "document.getElementById('thread').scrollTop -= 24")
    out = ROOT / "docs" / "chat-page.png" if os.environ.get("EXPO_PAGE_SCREENSHOT") == "1" else tmp_path / "page.png"
    try:
        driver.save_screenshot(str(out))  # type: ignore[attr-defined]
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})  # type: ignore[attr-defined]
    assert out.stat().st_size > 10_000


def test_dark_theme_follows_the_system(driver: object, server: str) -> None:
    new_chat(driver, server)
    background = "return getComputedStyle(document.body).backgroundColor"
    light = js(driver, background)
    dark_media = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", dark_media)  # type: ignore[attr-defined]
    try:
        dark = js(driver, background)
    finally:
        light_media = {"features": [{"name": "prefers-color-scheme", "value": "light"}]}
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", light_media)  # type: ignore[attr-defined]
    assert light == "rgb(255, 255, 255)" and dark != light, (light, dark)


def test_search_and_delete_in_the_side_list(driver: object, server: str) -> None:
    new_chat(driver, server)
    ask(driver, "echo zebra crossing")
    click(driver, "#new-chat")
    ask(driver, "echo giraffe neck")

    def listed() -> list[str]:
        return js(driver, "return [...document.querySelectorAll('#conv-list .first')].map(e => e.textContent)")  # type: ignore[return-value]

    wait(driver, lambda: listed()[:2] == ["echo giraffe neck", "echo zebra crossing"], 10, str(listed()))
    js(driver, "const s = document.getElementById('search'); s.value = 'zebra'; s.dispatchEvent(new Event('input'))")
    wait(driver, lambda: listed() == ["echo zebra crossing"], 10, str(listed()))
    click(driver, "#conv-list .conv .delete")
    driver.switch_to.alert.accept()  # type: ignore[attr-defined]
    wait(driver, lambda: listed() == [], 10, str(listed()))
    assert "No conversation holds these words." in js(driver, "return document.getElementById('conv-note').textContent")
    remaining = get_json(f"{server}/api/conversations?n=50&q=zebra")
    assert remaining == []


def test_copy_puts_a_code_block_on_the_clipboard(driver: object, server: str) -> None:
    new_chat(driver, server)
    grant = {"permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"], "origin": server}
    driver.execute_cdp_cmd("Browser.grantPermissions", grant)  # type: ignore[attr-defined]
    copied = driver.execute_async_script(  # type: ignore[attr-defined]
        """const done = arguments[arguments.length - 1];
        const box = document.createElement('div'); document.getElementById('messages').append(box);
        window.expoMarkdown('Run:\\n\\n```sh\\necho "a <b>"\\nls -l\\n```\\n', box);
        const b = box.querySelector('.code .copy'); b.click();
        setTimeout(async () => done([b.textContent, await navigator.clipboard.readText()]), 300);""",
    )
    assert copied == ["Copied", 'echo "a <b>"\nls -l'], copied
