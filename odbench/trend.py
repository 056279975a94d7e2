"""What a person looks at: the last runs of an entry as a markdown table and as a PNG chart.

Every cell that comes from data (names, ids, URLs) is escaped, so a dataset or model name cannot inject
markup into a report. The chart is drawn with numpy and cv2 (no plotting library).
"""

from __future__ import annotations

import base64
import itertools
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from odbench.history import HistoryRecord

CHART_WIDTH = 800
PANEL_HEIGHT = 230
HEADER_HEIGHT = 34
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 90, 30, 34, 40
_MAX_X_LABELS = 8
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _GRID, _AXIS = (40, 40, 40), (225, 225, 225), (150, 150, 150)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~!()#])")


def escape_markdown(text: object) -> str:
    """`text` as literal markdown inline text: one line, no HTML, links, code or table pipes."""
    flat = " ".join(str(text).splitlines())
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def _link(url: str | None, text: str) -> str:
    """A markdown link to an http(s) URL (percent-encoded so it cannot break out), else the escaped text."""
    if not url:
        return ""
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        return escape_markdown(url)
    return f"[{escape_markdown(text)}](<{urllib.parse.quote(url, safe=':/?#&=%@+,;.-_~!$*')}>)"


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _latest(records: Sequence[HistoryRecord], last: int) -> list[HistoryRecord]:
    """The last `last` records by recorded time, oldest first."""
    if last < 1:
        raise ValueError(f"last must be at least 1, got {last}")
    return sorted(records, key=lambda r: (r.recorded_at, r.run_id))[-last:]


def trend_markdown(records: Sequence[HistoryRecord], last: int = 10) -> str:
    """The last runs of one entry as a markdown table, newest first, with a link to each flow run."""
    runs = _latest(records, last)[::-1]
    if not runs:
        return "No runs recorded yet."
    head = f"**{escape_markdown(runs[0].entry_label)}**: the last {len(runs)} run(s), newest first"
    rows = [
        "| recorded | run id | model md5 | mAP (%) | samples/s | p90 ms | validity | hardware | flow run |",
        "|---|---|---|---:|---:|---:|---|---|---|",
        *(_row(r) for r in runs),
    ]
    return "\n".join([head, "", *rows])


def _row(r: HistoryRecord) -> str:
    m = r.metrics
    cells = [escape_markdown(r.recorded_at.strftime("%Y-%m-%d %H:%M:%SZ")), escape_markdown(r.run_id),
             escape_markdown(r.model_md5[:8]), _fmt(m.mAP, 3), _fmt(m.samples_per_second, 1),
             _fmt(m.latency_p90_ms, 3), escape_markdown(r.validity or "n/a"), escape_markdown(r.hardware),
             _link(r.flow_run_url, r.flow_run_id or "flow run")]
    return "| " + " | ".join(cells) + " |"


def chart_markdown(png: bytes, alt: str) -> str:
    """The PNG as a markdown image with a data URI (a report then needs no file beside it)."""
    return f"![{escape_markdown(alt)}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


@dataclass(frozen=True)
class _Panel:
    """One chart panel: a title and one value (or None, a gap) per run."""

    title: str
    values: tuple[float | None, ...]
    digits: int


def trend_chart_png(records: Sequence[HistoryRecord], last: int = 30) -> bytes:
    """mAP and samples/s over the last runs, two stacked panels, as PNG bytes (about 800 px wide)."""
    runs = _latest(records, last)
    panels = (_Panel("mAP (%)", tuple(r.metrics.mAP for r in runs), 3),
              _Panel("samples/s (LoadGen)", tuple(r.metrics.samples_per_second for r in runs), 1))
    image = np.full((HEADER_HEIGHT + PANEL_HEIGHT * len(panels), CHART_WIDTH, 3), 255, np.uint8)
    title = runs[-1].entry_label if runs else "no runs recorded yet"
    _text(image, _ascii(title), (10, 23), 0.6, thickness=2)
    dates = [r.recorded_at.strftime("%m-%d") for r in runs]
    for n, panel in enumerate(panels):
        _draw_panel(image[HEADER_HEIGHT + n * PANEL_HEIGHT:HEADER_HEIGHT + (n + 1) * PANEL_HEIGHT], panel, dates)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("cv2 could not encode the trend chart as PNG")
    return encoded.tobytes()


def _ascii(text: str, limit: int = 90) -> str:
    """What cv2's Hershey font can draw: printable ASCII, shortened to fit the width."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, thickness: int = 1) -> None:
    cv2.putText(image, text, origin, _FONT, scale, _INK, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.45) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _draw_panel(panel: np.ndarray, spec: _Panel, dates: list[str]) -> None:
    """Title, frame, x labels (dates), min/max labels and the series with gaps at None."""
    height, width = panel.shape[:2]
    left, right, top, bottom = _MARGIN_LEFT, width - _MARGIN_RIGHT, _MARGIN_TOP, height - _MARGIN_BOTTOM
    _text(panel, spec.title, (left, 22), 0.55, thickness=1)
    cv2.rectangle(panel, (left, top), (right, bottom), _AXIS, 1)
    xs = _x_positions(len(spec.values), left, right)
    _x_labels(panel, xs, dates, bottom)
    present = [v for v in spec.values if v is not None]
    if not present:
        _text(panel, "no data", ((left + right) // 2 - 30, (top + bottom) // 2))
        return
    lo, hi = min(present), max(present)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 1.0)
    to_y = _y_scale(lo - pad, hi + pad, top, bottom)
    for value in sorted({lo, hi}):
        y = to_y(value)
        cv2.line(panel, (left + 1, y), (right - 1, y), _GRID, 1)
        label = f"{value:.{spec.digits}f}"
        _text(panel, label, (left - 8 - _text_width(label), y + 5))
    _series(panel, [(x, to_y(v)) if v is not None else None for x, v in zip(xs, spec.values)])


def _x_positions(n: int, left: int, right: int) -> list[int]:
    inset = 20
    if n == 1:
        return [(left + right) // 2]
    return [round(left + inset + i * (right - left - 2 * inset) / (n - 1)) for i in range(n)]


def _x_labels(panel: np.ndarray, xs: list[int], dates: list[str], bottom: int) -> None:
    """The run dates under the axis: the first, the last and evenly spaced ones between."""
    if not xs:
        return
    step = max(1, -(-len(xs) // _MAX_X_LABELS))
    shown = sorted({*range(0, len(xs), step), len(xs) - 1})
    for i in shown:
        if i != len(xs) - 1 and len(xs) - 1 - i < step:  # too close to the last label
            continue
        cv2.line(panel, (xs[i], bottom), (xs[i], bottom + 4), _AXIS, 1)
        _text(panel, dates[i], (xs[i] - _text_width(dates[i]) // 2, bottom + 20))
    _text(panel, "run order (date)", (panel.shape[1] // 2 - 55, bottom + 36), 0.4)


def _y_scale(lo: float, hi: float, top: int, bottom: int) -> Callable[[float], int]:
    """Value to pixel row: `lo` at the bottom, `hi` at the top."""
    def to_y(value: float) -> int:
        return round(bottom - (value - lo) / (hi - lo) * (bottom - top))

    return to_y


def _series(panel: np.ndarray, points: list[tuple[int, int] | None]) -> None:
    """Lines between neighbouring runs that both have a value (a None leaves a gap), a dot per value."""
    colour = (180, 90, 20)
    for a, b in itertools.pairwise(points):
        if a is not None and b is not None:
            cv2.line(panel, a, b, colour, 2, cv2.LINE_AA)
    for point in points:
        if point is not None:
            cv2.circle(panel, point, 4, colour, -1, cv2.LINE_AA)
