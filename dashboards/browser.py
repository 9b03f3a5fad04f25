"""Drive the dashboard in a real browser: start `streamlit run` on a free localhost port and
control headless Chromium (Debian's /usr/bin/chromium) with Playwright. Shared by the browser
test and benchmarks/bench_dashboard.py.

    with serve(runs_dir) as url, browser() as page:
        page.goto(url + "?view=Attention"); wait_idle(page)

The screenshots in the docs come from its command line (Debian's chromium and playwright needed):

    python dashboards/browser.py --runs-dir runs --run demo-20261201-120000 --view Attention --out docs/dashboard.png
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP = Path(__file__).resolve().parent / "app.py"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def missing() -> str:
    """Why a browser cannot be driven here ('' when it can)."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright; no browser download needed)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(runs_dir: Path, timeout: float = 60.0, log: Path | None = None, port: int | None = None):
    """`streamlit run dashboards/app.py` on 127.0.0.1:<port> (default: a free one); yields the
    base URL once the server answers its health check."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--runs-dir", str(runs_dir)]
    out = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start on port {port} (exit code {proc.poll()})")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


@contextmanager
def browser(width: int = 1500, height: int = 1100):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b.new_page(viewport={"width": width, "height": height})
        finally:
            b.close()


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


# A chart's identity on screen: its title and a checksum of the first trace's z values, read
# from the plotly graph div (what the browser actually drew).
FINGERPRINT_JS = """(i) => {
  const gd = document.querySelectorAll('.js-plotly-plot')[i];
  if (!gd || !gd.data || !gd.data.length) return null;
  const title = (gd.layout && gd.layout.title && gd.layout.title.text) || '';
  let sum = 0, n = 0;
  const walk = (v) => { if (v == null) return; if (typeof v === 'number') { if (!isNaN(v)) { sum += v * (1 + (n++ % 7)); } return; }
                        if (v.length !== undefined && typeof v !== 'string') for (const x of v) walk(x); };
  walk(gd.data[0].z);
  return title + ' | ' + sum.toFixed(6) + ' | ' + n;
}"""


def fingerprint(page, index: int = 0) -> str | None:
    return page.evaluate(FINGERPRINT_JS, index)


def load(page, url: str, charts: int = 1, timeout_ms: int = 60_000) -> float:
    """Open url; seconds until the script is idle and `charts` plotly charts are drawn."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {charts}", timeout=timeout_ms)
    wait_idle(page, timeout_ms)
    return time.perf_counter() - t0


def move_slider(page, key: str = "ArrowLeft", index: int = 0, timeout_ms: int = 30_000, slider: int = 0) -> float:
    """Press `key` on the page's slider number `slider` (the first: the snapshot slider); seconds until
    chart `index` shows different data."""
    before = fingerprint(page, index)
    thumb = page.locator("[data-testid='stSlider'] input[type='range']").nth(slider)
    thumb.focus()
    t0 = time.perf_counter()
    page.keyboard.press(key)
    return _until_redrawn(page, index, before, t0, timeout_ms)


def _until_redrawn(page, index: int, before: str | None, t0: float, timeout_ms: int) -> float:
    page.wait_for_function(f"(b) => ({FINGERPRINT_JS})({index}) !== b", arg=before, timeout=timeout_ms)
    wait_idle(page, timeout_ms)
    return time.perf_counter() - t0


def enter_text(page, label: str, text: str, index: int = 0, timeout_ms: int = 60_000) -> float:
    """Type `text` into the text box labelled `label` and press Enter; seconds until chart `index`
    shows different data and the app is idle."""
    before = fingerprint(page, index)
    box = page.get_by_label(label)
    box.fill(text)
    t0 = time.perf_counter()
    box.press("Enter")
    return _until_redrawn(page, index, before, t0, timeout_ms)


def click_toggle(page, label: str, charts: int, timeout_ms: int = 60_000) -> float:
    """Click the toggle labelled `label`; seconds until `charts` plotly charts are drawn and the app is idle."""
    t0 = time.perf_counter()
    page.get_by_text(label, exact=True).click()
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {charts}", timeout=timeout_ms)
    wait_idle(page, timeout_ms)
    return time.perf_counter() - t0


def screenshot(runs_dir: Path, run: str, view: str, out: Path, charts: int = 1, width: int = 1500, height: int = 1000) -> Path:
    """A PNG of one view of one run, as a browser draws it, written whole (never half a picture at `out`)."""
    from urllib.parse import urlencode

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    with serve(runs_dir) as url, browser(width, height) as page:
        load(page, url + "?" + urlencode({"run": run, "view": view}), charts)
        page.screenshot(path=str(tmp))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(APP.parent.parent))
    from dashboards.views import VIEWS
    from guppy.cli import ArgumentParser, positive_int, run_main

    p = ArgumentParser(prog="dashboards/browser.py", description="Screenshot one dashboard view of a run in a real browser.")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="the runs folder (default runs)")
    p.add_argument("--run", required=True, help="the run's name inside --runs-dir")
    p.add_argument("--view", default="Attention", choices=list(VIEWS), help="the view (default Attention)")
    p.add_argument("--charts", type=positive_int, default=1, help="charts to wait for before the picture (default 1)")
    p.add_argument("--height", type=positive_int, default=1000, help="the browser window's height in pixels (default 1000)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)

    def body():
        if why := missing():
            raise OSError(f"no browser to drive: {why}")
        if not (args.runs_dir / args.run).is_dir():
            raise ValueError(f"{args.runs_dir / args.run}: no such run folder")
        if not args.out.parent.is_dir():
            raise ValueError(f"--out {args.out}: its folder does not exist")
        print(f"wrote {screenshot(args.runs_dir, args.run, args.view, args.out, args.charts, height=args.height)}")

    return run_main("dashboards/browser.py", body)


if __name__ == "__main__":
    sys.exit(main())
