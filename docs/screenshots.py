"""The pictures of the MLflow UI in docs/tracking.md, taken from a real run in headless Chromium.

    apt-get install chromium                                  # Debian's; any Chromium works
    ganflow run --plugin dcgan                                # or any finished ganflow run
    python docs/screenshots.py                                # the newest run in ./mlflow.db
    python docs/screenshots.py --tracking-uri sqlite:///path/mlflow.db --run RUN_ID

It starts `mlflow ui` on the store (127.0.0.1, a free port), opens the run's Model metrics tab
and its registered version's page in Chromium, and writes docs/ui-run-charts.png (the charts),
docs/ui-run-samples.png (the sample grids, full-screen, at the last step) and
docs/ui-model-version.png. Chromium is driven over its DevTools protocol on a pipe
(--remote-debugging-pipe), so nothing but Chromium and the standard library is needed.
Remake the pictures when MLflow's UI changes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Browser:
    """Headless Chromium with one page, spoken to over the DevTools protocol on a pipe:
    messages are JSON, each ended by a NUL byte, on the browser's fds 3 (in) and 4 (out)."""

    def __init__(self, width: int, height: int):
        executable = shutil.which("chromium") or shutil.which("chromium-browser") or \
            shutil.which("google-chrome")
        if executable is None:
            sys.exit("no Chromium found: apt-get install chromium")
        to_browser_r, self._out = os.pipe()
        self._in, from_browser_w = os.pipe()
        self._profile = tempfile.mkdtemp(prefix="ganflow-chromium-")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--disable-quic", "about:blank"]
        # The shell moves the pipe ends to the fds Chromium expects.
        self._proc = subprocess.Popen(
            ["sh", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}',
             executable, *flags],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._id = 0
        self._buffer = b""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
        self.page("Page.enable")
        self.resize(width, height)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:  # events arrive between answers: skip them
            answer = self._read()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self, timeout: float = 60.0) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], timeout)
            chunk = os.read(self._in, 1 << 20) if ready else b""
            if not chunk:
                raise RuntimeError("Chromium stopped answering")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def page(self, method: str, **params) -> dict:
        return self.send(method, session=self._session, **params)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str, timeout: float = 60.0) -> None:
        """Go to ``url`` and wait until the JavaScript ``ready`` is true, then a little more
        for charts to finish drawing."""
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: not ready after {timeout:.0f} s ({ready})")
            time.sleep(0.5)
        time.sleep(3)

    def click(self, x: float, y: float) -> None:
        self.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)
        time.sleep(2)

    def resize(self, width: int, height: int) -> None:
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path, fit: bool = True, settle: float = 5.0) -> Path:
        """The window as a PNG, after ``settle`` seconds for pictures and charts to load;
        with ``fit``, first cut (or grown) to end below the lowest chart card."""
        if fit:
            self.resize(self.evaluate("window.innerWidth"), self.evaluate(CONTENT_HEIGHT))
        time.sleep(settle)
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot",
                                                    format="png")["data"]))
        return path

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


# The charts of the run's picture, by metric key.
CHARTS = ("d_loss", "g_loss", "jsd_estimate", "eval/fid")
# JavaScript run in the page. The MLflow Assistant panel takes a third of the width.
CLOSE_ASSISTANT = """(() => { const b = document.querySelector('button[aria-label="Close"]');
  if (b) b.click(); return !!b; })()"""
# Typing into React's input: its own value setter, then an input event.
SEARCH = """(q => { const i = document.querySelector('input[placeholder="Search metric charts"]');
  const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;
  set.call(i, q); i.dispatchEvent(new Event('input', {bubbles: true})); return true; })(%s)"""
FULLSCREEN = """document.querySelector('[data-component-id="fullscreen_button_chartcard"]')
  .click() || true"""
# Where to click to move the (last) image slider to its last step: its track's right end.
SLIDER_END = """(() => { const thumbs = document.querySelectorAll('[role="slider"]');
  let track = thumbs[thumbs.length - 1].parentElement;
  while (track.getBoundingClientRect().width < 200) track = track.parentElement;
  const r = track.getBoundingClientRect(); return [r.right - 2, r.y + r.height / 2]; })()"""
# The height at which the window shows the whole page: down to the lowest chart card where
# there are cards, else all of the scrolling pane (MLflow scrolls a pane, not the page).
CONTENT_HEIGHT = """(() => {
  const cards = document.querySelectorAll('[data-testid="draggable-card-resize-handle"]');
  if (cards.length)
    return Math.ceil(Math.max(...Array.from(cards).map(e => e.getBoundingClientRect().bottom)) + 40);
  let extra = 0;
  for (const e of document.querySelectorAll('*'))
    extra = Math.max(extra, e.scrollHeight - e.clientHeight);
  return window.innerHeight + extra + 24; })()"""


def has_text(*texts: str) -> str:
    """JavaScript: the page shows every one of ``texts``."""
    return " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)


def start_ui(tracking_uri: str) -> tuple[subprocess.Popen, str]:
    import socket

    from ganflow.ui import server_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                             tracking_uri, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=server_env())
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("mlflow ui did not start in 2 minutes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--run", help="run id (default: the newest run with a registered model)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the pictures")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()

    import mlflow

    client = mlflow.MlflowClient(args.tracking_uri)
    versions = client.search_model_versions(f"run_id = '{args.run}'" if args.run else "")
    if not versions:
        sys.exit(f"no registered model version{' of run ' + args.run if args.run else ''} in "
                 f"{args.tracking_uri}: train one with `ganflow run --plugin dcgan`")
    version = max(versions, key=lambda v: int(v.creation_timestamp))
    run = client.get_run(version.run_id)
    view = "?workflowType=machine_learning"
    ui, base = start_ui(args.tracking_uri)
    browser = Browser(args.width, 1000)
    try:
        # The run's charts: the losses, the lecture's JSD estimate, FID, and the sample grids'
        # card (MLflow captions an image with the run's params, above the picture).
        browser.open(f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                     f"/model-metrics{view}", has_text("d_loss"))
        browser.evaluate(CLOSE_ASSISTANT)
        browser.evaluate(SEARCH % json.dumps(f"^({'|'.join(CHARTS)})$|samples"))
        browser.resize(args.width, 2400)  # every card on screen, so drawn
        time.sleep(3)
        charts = browser.screenshot(args.out / "ui-run-charts.png")
        # The sample grids full-screen, the slider moved to the last step.
        browser.resize(1100, 1500)
        browser.evaluate(SEARCH % json.dumps("samples"))
        time.sleep(3)
        browser.evaluate(FULLSCREEN)
        time.sleep(3)
        browser.click(*browser.evaluate(SLIDER_END))
        samples = browser.screenshot(args.out / "ui-run-samples.png", fit=False)
        # The registered version: its description, tags (eval.*, train.*) and metrics.
        browser.resize(args.width, 1000)
        browser.open(f"{base}/#/models/{version.name}/versions/{version.version}{view}",
                     has_text(f"Version {version.version}", "eval.fid"))
        browser.evaluate(CLOSE_ASSISTANT)
        page = browser.screenshot(args.out / "ui-model-version.png", fit=False)
    finally:
        browser.close()
        ui.terminate()
        ui.wait(timeout=30)
    print(f"run {run.info.run_id}, {version.name} version {version.version}:")
    print(f"  {charts}\n  {samples}\n  {page}")


if __name__ == "__main__":
    main()
