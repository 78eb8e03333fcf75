"""Headless Chromium driven over the DevTools protocol (loopback only), for the review report's
tests: navigate, evaluate JavaScript, type keys, capture downloads, and collect console errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium driven over the DevTools protocol (loopback only): navigate, evaluate
    JavaScript, and collect console errors and uncaught exceptions."""

    def __init__(self) -> None:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="nsnet-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "--window-size=1280,1800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ, TMPDIR=self.profile))  # its helper processes and temp files stay ours
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.fail("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20))
        self.next_id = 0
        self.errors: list[str] = []
        self.events: list[dict] = []
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(method)

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        self.events.append(msg)
        if m == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(p.get("exceptionDetails", {}))[:500])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append(json.dumps(p.get("args", []))[:500])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append(p["entry"].get("text", "")[:500])

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.time() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.time() < deadline, "page did not load"
            self._event(json.loads(self.ws.recv(timeout=60)))

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def key(self, key: str) -> None:
        """One real key press (keyDown, keyUp) as the page's keyboard listeners receive it."""
        single = len(key) == 1
        code = f"Key{key.upper()}" if single and key.isalpha() else key
        for kind in ("keyDown", "keyUp"):
            extra = {"text": key} if kind == "keyDown" and single else {}
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code,
                      windowsVirtualKeyCode=ord(key.upper()) if single else 0, **extra)

    def download(self, folder: Path, click_js: str, name: str, timeout: float = 30) -> Path:
        """Let the page save downloads into ``folder``, run ``click_js`` and wait for ``name``."""
        self.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder))
        self.js(click_js)
        target, deadline = folder / name, time.time() + timeout
        while not (target.exists() and not list(folder.glob("*.crdownload"))):
            assert time.time() < deadline, f"no download {name} in {folder}: {sorted(os.listdir(folder))}"
            time.sleep(0.1)
        return target

    def close(self) -> None:
        if getattr(self, "stack", None) is not None:
            self.stack.close()
        # The browser's renderer/zygote children share the session we started it in: end that group.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(10)
                time.sleep(0.5)
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    pytest.importorskip("websockets", reason="the DevTools client needs the websockets package")
    b = Browser()
    yield b
    b.close()
