"""Render Prefect UI pages in headless Chromium for tests: `render`, `render_until`, `visible_text`.

Facts measured with Prefect 3.9.1 (its server serves two UIs: V1, the default, at `/`, and V2 at `/v2/...`;
start the server with PREFECT_UI_API_URL = PREFECT_API_URL so the UI calls the right port) and Debian's
Chromium 150, `--virtual-time-budget=15000`, on a 2-core machine:

- `/artifacts/artifact/<artifact id>` (V1) and `/v2/artifacts/artifact/<artifact id>` (V2) render the
  artifact itself: a markdown artifact's text and tables (`mAP 37.123` is in the visible text), a table
  artifact's rows, a link artifact's link (`create_link_artifact` is stored as type markdown). A markdown
  image `![chart](data:image/png;base64,...)` survives the sanitizer in both UIs: the DOM holds
  `<img src="data:image/png;base64,...">` (V2 also keeps `alt="chart"`) and the screenshot shows the image.
  2.5-7 s per render.
- `/artifacts/key/<key>` (both UIs): a timeline of the key's versions (description, short artifact id,
  flow run name) but NOT the artifact's content: the mAP number is not there.
- `/runs/flow-run/<flow run id>` (V1): header, flow-run graph (a canvas: its artifact labels are not DOM
  text) and the Logs tab; no artifact content. `?tab=Artifacts` does NOT work in V1: the tab is hidden until
  the run is loaded, and the tab list then resets the selection to Logs (`?tab=Parameters` works: the run's
  parameters as JSON). `/v2/runs/flow-run/<id>?tab=Artifacts` does select the Artifacts tab: one card per
  artifact (type, key, description), not the content. Link to the artifact page for content.
- The deployment's custom-run form is `/deployments/deployment/<deployment id>/run` (V1) and
  `/v2/deployments/deployment/<id>/run` (V2). Both show each parameter's docstring description
  (`Args:` section of a Google-style docstring) in the visible text, with the title `<name> (Optional)`
  for a parameter with a default. `Literal[...]` choices: V1 renders a native `<select>` whose
  `<option value="...">` elements hold EVERY choice (in DOM and visible text, without opening it);
  V2 renders a closed listbox button showing only the current value (the other choices are absent from
  the DOM). The V1 form's screenshot may be caught mid fade-in (dim); its DOM is complete.
- Timings: 2-9 s wall per `--dump-dom` render (mostly 3-6 s; the budget is virtual time, not wall time),
  the same again for a screenshot. 40 of 40 renders of the artifact pages, both run forms and the V1
  flow-run page of a finished run had their data with the 15 s budget. But not every page is complete
  every time: the V1 `/artifacts/key/<key>` timeline was missing in 7 of 11 renders, and the V1 flow-run
  logs were missing at budgets of 1-3 s. So assert through `render_until` (render again until the text
  is there), not a single `render`.
- Chromium exits 0 on an unreachable URL (its error page); `render` raises instead.
- `visible_text` drops attribute values: look for `src="data:image/png;base64,` or `<option value=` in
  the DOM that `render` returns.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = next(
    filter(None, (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome"))),
    None,
)
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1300",
)
STARTUP_ALLOWANCE_S = 60  # wall time allowed beyond the virtual-time budget (start, network, a slow CI host)
_NOISE = re.compile(r"dbus|unexpected operator|Fontconfig|DevTools listening|^\s*$")


def require_chromium() -> str:
    """The Chromium executable; skips the test where none is installed (CI installs it with apt-get)."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (no chromium, chromium-browser or google-chrome on PATH)")
    return CHROMIUM


def _run_chromium(args: list[str], timeout_s: float) -> str:
    """Run Chromium with a fresh profile; its stdout, or RuntimeError with its stderr."""
    if CHROMIUM is None:
        raise RuntimeError("Chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its renderer/GPU helpers (its own session)
            out, err = proc.communicate()
            raise RuntimeError(f"Chromium timed out after {timeout_s:.0f}s: {' '.join(args)}\n{_stderr(err)}")
    if proc.returncode != 0:
        raise RuntimeError(f"Chromium exited {proc.returncode}: {' '.join(args)}\n{_stderr(err)}")
    return out


def _stderr(err: str, chars: int = 4000) -> str:
    lines = [line for line in err.splitlines() if not _NOISE.search(line)]
    return ("stderr:\n" + "\n".join(lines))[-chars:] if lines else "(no stderr beyond D-Bus noise)"


def render(url: str, *, screenshot: Path | None = None, budget_ms: int = 15000,
           timeout_s: float | None = None) -> str:
    """The DOM of `url` after `budget_ms` of virtual time (`--dump-dom`); with `screenshot`, also a PNG
    of the page from a second Chromium run. Raises RuntimeError (with Chromium's stderr) when Chromium
    fails or times out, or the page did not load (Chromium's network-error page)."""
    timeout = timeout_s if timeout_s is not None else budget_ms / 1000 + STARTUP_ALLOWANCE_S
    dom = _run_chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    if not dom.strip():
        raise RuntimeError(f"Chromium returned an empty DOM for {url}")
    if 'id="main-frame-error"' in dom:
        raise RuntimeError(f"Chromium could not load {url}: {visible_text(dom)[:300]}")
    if screenshot is not None:
        _screenshot(url, Path(screenshot), budget_ms, timeout)
    return dom


def _screenshot(url: str, path: Path, budget_ms: int, timeout_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _run_chromium([f"--virtual-time-budget={budget_ms}", f"--screenshot={path.resolve()}", url], timeout_s)
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot of {url} to {path}")


def render_until(url: str, needle: str, timeout_s: float = 90, screenshot: Path | None = None,
                 budget_ms: int = 15000) -> str:
    """Render `url` until `needle` is in the DOM or in its visible text, for up to `timeout_s` (at least
    one render); returns that DOM. With `screenshot`, a PNG of the page is taken afterwards (a separate
    render: it may show less than the DOM did). Raises AssertionError with the page's visible text when
    the needle never appears."""
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        dom = render(url, budget_ms=budget_ms)
        found = needle in dom or needle in visible_text(dom)
        if found or time.monotonic() >= deadline:
            break
        time.sleep(1)
    if screenshot is not None:
        _screenshot(url, Path(screenshot), budget_ms, budget_ms / 1000 + STARTUP_ALLOWANCE_S)
    if not found:
        raise AssertionError(f"{needle!r} not in {url} after {attempts} renders ({timeout_s:.0f}s); visible text:\n"
                             f"{visible_text(dom)[-3000:]}")
    return dom


def visible_text(dom: str) -> str:
    """The text of an HTML document: no scripts, styles, comments, SVG or tags; entities decoded;
    whitespace collapsed to single spaces. Attribute values (an <img src>, <option value>) are dropped:
    search the DOM itself for those."""
    text = re.sub(r"(?is)<(script|style|noscript|template|svg)\b.*?</\1\s*>", " ", dom)
    text = re.sub(r"(?s)<!--.*?-->", " ", text)
    text = re.sub(r"(?s)<[^>]*>", " ", text)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()
