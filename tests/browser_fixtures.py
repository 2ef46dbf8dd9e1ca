"""Fixtures for the browser tests: the real kefu, a real Chromium, a cuttable network.

    kefu_system   `python -m kefu run` as a subprocess on free ports (on the
                  session's redis-server), shop 8000 created with the CLI, and
                  browsers reaching the comet through a CutProxy so a test can
                  cut the visitor's network and bring it back
    browser       Debian's Chromium driven by Playwright (sync API), headless
    pages         opens visitor pages and agent consoles, each in its own
                  browser context, and checks after the test that none of them
                  logged a page error, a CSP violation or a dialog (alert)

Import with `from tests.browser_fixtures import *  # noqa: F403`.
"""
from __future__ import annotations

import http.server
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

__all__ = ["ARTIFACTS", "CutProxy", "KefuSystem", "Pages", "SHOP", "PASSWORD", "browser",
           "free_port", "kefu_system", "merchant_site", "pages"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
SHOP, SHOP_NAME, PASSWORD = "8000", "测试商店", "secret123"
PHONE = {"viewport": {"width": 360, "height": 740}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CutProxy:
    """A TCP relay in front of the comet port: cut() is the network going away.

    While cut, every relayed connection is closed and new ones are accepted
    and closed at once (what a dead mobile network looks like to a browser);
    restore() lets connections through again.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_now = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_now:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self.lock:
            self.conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        self.cut_now = True
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            self._drop(s)

    def restore(self) -> None:
        self.cut_now = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


class KefuSystem:
    """The running system: its URLs and a way to stop it."""

    def __init__(self, proc: subprocess.Popen, api: str, proxy: CutProxy, log: Path) -> None:
        self.proc, self.api, self.proxy, self.log = proc, api, proxy, log
        self.agent_state = None          # the agent's cookies after the first login
        self.common: list[str] = []      # --redis-url/--data-dir of this system
        self.env: dict = {}

    def cli(self, *args: str) -> None:
        """`python -m kefu <args>` against this system (e.g. shop create)."""
        subprocess.run([sys.executable, "-m", "kefu", *args, *self.common], env=self.env, cwd=ROOT,
                       check=True, timeout=60, capture_output=True)

    def url(self, path: str) -> str:
        return self.api + path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _wait_healthy(system: KefuSystem, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if system.proc.poll() is not None:
            raise RuntimeError(f"kefu run exited with {system.proc.returncode}:\n{system.log_tail()}")
        try:
            with urllib.request.urlopen(system.url("/healthz"), timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"kefu did not become healthy:\n{system.log_tail()}")


def _start(common: list[str], env: dict, data: Path, attempt: int) -> "KefuSystem":
    api_port, comet_port, tcp_port = free_port(), free_port(), free_port()
    proxy = CutProxy(comet_port)
    env = {**env, "KEFU_PUBLIC_WS_URL": f"ws://127.0.0.1:{proxy.port}/sub"}
    log = data / f"kefu-{attempt}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kefu", "run", *common, "--api-port", str(api_port),
             "--comet-port", str(comet_port), "--tcp-port", str(tcp_port), "--workers", "1"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    system = KefuSystem(proc, f"http://127.0.0.1:{api_port}", proxy, log)
    system.common, system.env = common, env
    return system


def _stop(system: KefuSystem) -> None:
    system.proxy.close()
    proc = system.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def kefu_system(redis_server, tmp_path_factory):
    """`python -m kefu run` with one comet worker, shop 8000, comet behind a CutProxy."""
    data = tmp_path_factory.mktemp("kefu-browser")
    # Every browser of the test comes from 127.0.0.1: the per-IP limits would
    # see one very busy visitor, so they are raised (per-sender limits stay).
    env = {**os.environ, "KEFU_PREFIX": f"browser{os.getpid()}:",
           "KEFU_RATE_VISITORS_PER_IP": "100", "KEFU_RATE_MESSAGES_PER_IP": "0",
           "KEFU_RATE_UPLOADS_PER_IP": "0", "KEFU_LOGIN_ATTEMPTS": "100"}
    common = ["--redis-url", redis_server, "--data-dir", str(data)]
    subprocess.run([sys.executable, "-m", "kefu", "shop", "create", SHOP, "--name", SHOP_NAME,
                    "--password", PASSWORD, *common], env=env, cwd=ROOT, check=True, timeout=60,
                   capture_output=True)
    for attempt in range(3):        # a free port can be taken by another process before we bind it
        system = _start(common, env, data, attempt)
        try:
            _wait_healthy(system)
            break
        except RuntimeError:
            _stop(system)
            if attempt == 2 or "already in use" not in system.log_tail(200):
                raise
    try:
        yield system
    finally:
        _stop(system)


MERCHANT_HTML = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>我的网店</title></head>
<body><h1>我的网店</h1><p>商品列表……</p>
<script src="{api}/widget.js" data-shop="{shop}" async></script>
</body></html>
"""


@pytest.fixture(scope="module")
def merchant_site(kefu_system):
    """A merchant's page with the one-line embed, on another site (localhost vs 127.0.0.1).

    A real server on loopback: Chromium refuses a page it thinks public
    (a routed fake host) loading scripts from loopback (Private Network Access).
    """
    body = MERCHANT_HTML.format(api=kefu_system.api, shop=SHOP).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# Records what a strict page must never do: violate the CSP, throw, or open a dialog.
WATCH_SCRIPT = """
window.__kefuProblems = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__kefuProblems.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
});
"""


class Pages:
    """Browser contexts of one test; problems seen on any page fail the test."""

    _names = itertools.count(1)

    def __init__(self, browser, system: KefuSystem) -> None:
        self.browser, self.system = browser, system
        self.contexts = []
        self.problems: list[str] = []
        self.dialogs: list[str] = []

    def context(self, device=DESKTOP, **kwargs):
        ctx = self.browser.new_context(**device, locale="zh-CN", **kwargs)
        ctx.set_default_timeout(10_000)
        ctx.add_init_script(WATCH_SCRIPT)
        self.contexts.append(ctx)
        return ctx

    def watch(self, page, tag: str):
        page.on("pageerror", lambda e: self.problems.append(f"{tag} pageerror: {e}"))
        page.on("console", lambda m: self._console(tag, m))
        page.on("dialog", lambda d: (self.dialogs.append(f"{tag}: {d.message}"), d.dismiss()))
        return page

    def _console(self, tag: str, m) -> None:
        text = m.text
        if m.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            self.problems.append(f"{tag} console: {text}")

    def visitor(self, device=PHONE, query: str = "", storage_state=None, context=None, shop=SHOP):
        """A visitor's page (its own context unless given), opened via the seed's link."""
        ctx = context or self.context(device, storage_state=storage_state)
        page = self.watch(ctx.new_page(), f"visitor{next(self._names)}")
        page.goto(self.system.url(f"/open/im?shop_id={shop}{query}"))
        page.wait_for_selector("#conn[data-state=open]", state="attached")
        return page

    def agent(self, device=DESKTOP, login_form: bool = False):
        """The agent console, logged in (through the form the first time, then by its cookie)."""
        state = None if login_form else self.system.agent_state
        ctx = self.context(device, storage_state=state)
        page = self.watch(ctx.new_page(), f"agent{next(self._names)}")
        page.goto(self.system.url(f"/info.html?shop_id={SHOP}"))
        if state is None:
            page.wait_for_selector("#login-view:not(.hidden)")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button[type=submit]")
        page.wait_for_selector("#console-view:not(.hidden)")
        if state is None:
            self.system.agent_state = ctx.storage_state()
        return page

    def check(self) -> None:
        for ctx in self.contexts:
            for page in ctx.pages:
                try:
                    self.problems += page.evaluate("window.__kefuProblems || []")
                except Exception:  # noqa: BLE001 - page gone (closed context)
                    pass
        assert not self.dialogs, f"a page opened a dialog: {self.dialogs}"
        assert not self.problems, "\n".join(self.problems)

    def close(self) -> None:
        for ctx in self.contexts:
            try:
                ctx.close()
            except Exception:  # noqa: BLE001 - already closed by the test
                pass


@pytest.fixture
def pages(browser, kefu_system):
    p = Pages(browser, kefu_system)
    try:
        yield p
        p.check()
    finally:
        p.close()
