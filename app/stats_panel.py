"""What the live window tells the user about speed: the stats panel, the latency plot, the record
indicator, and the short overlay drawn over the picture.

`StatsSnapshot` gathers the figures once per refresh (pure data); `overlay_lines` and
`panel_rows` turn it into text (pure functions); the widgets only draw.
"""
from __future__ import annotations

import collections
import math
import textwrap
from dataclasses import dataclass, field

from PyQt6.QtCore import QPointF, QRectF, Qt
from PyQt6.QtGui import QColor, QPainter, QPainterPath, QPen
from PyQt6.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

OVERLAY_WIDTH = 64  # characters a line of the overlay wraps at (the overlay covers the picture)


@dataclass(frozen=True)
class StatsSnapshot:
    """Figures for one refresh. Rates in frames per second, times in ms, counts since start.

    since_frame_s: seconds since the capture's last frame (None: none yet). capture_stalled: frames
    have stopped while the capture still says running. outages / outage_s: how many times frames
    stopped this run, and for how long in all.
    ring_lost: frames the capture ring overwrote before the engine saw them.
    engine_skipped: frames the engine passed over because it was busy (newest-frame policy).
    display_missed: results the display never drew (a newer one arrived first).
    stage_ms: the engine's median time per stage over its recent frames; frame_stages_ms: the times
    of the frame on the screen.
    source_counters: (name, count) of what the source itself counts (the PS3 Eye: frames, payloads
    it rejected and why, stalls, reads that gave up); None for a source that counts nothing.
    """

    source: str = ""
    capture_state: str = ""
    capture_fps: float = 0.0
    since_frame_s: float | None = None
    capture_stalled: bool = False
    outages: int = 0
    outage_s: float = 0.0
    engine_fps: float = 0.0
    display_fps: float = 0.0
    latency_median_ms: float = math.nan
    latency_p99_ms: float = math.nan
    stage_ms: dict[str, float] = field(default_factory=dict)
    engine_ms: float = math.nan  # median capture-to-result latency in the engine
    ring_lost: int = 0
    engine_skipped: int = 0
    display_missed: int = 0
    processor: str = ""
    steps: int | None = None
    frames_needed: int = 1
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    paused: bool = False
    frame_stages_ms: dict[str, float] = field(default_factory=dict)  # the shown frame's, in the order they ran
    frame_steps: int | None = None  # the step count that made the shown frame
    psnr_vs_truth: float | None = None  # of the shown frame, where the source knows the truth
    notice: str | None = None  # what the processor says about its frames (a part that is off, a fallback)
    source_counters: tuple[tuple[str, int], ...] | None = None  # the source's own, if it keeps any


def _fmt_ms(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.1f} ms"


def _fmt_db(v: float) -> str:
    return "–" if math.isnan(v) else "∞ dB" if math.isinf(v) else f"{v:.2f} dB"


def _fmt_size(s: tuple[int, int] | None) -> str:
    return "–" if s is None else f"{s[0]}×{s[1]}"


def steps_text(steps: int) -> str:
    """0 is the processor's refinement off (the steps control's "off")."""
    return "steps off" if steps == 0 else f"{steps} step{'s' if steps != 1 else ''}"


def model_text(s: StatsSnapshot) -> str:
    text = s.processor or "–"
    if s.frames_needed > 1:
        text += f", burst {s.frames_needed}"
    if s.steps is not None:
        text += f", {steps_text(s.steps)}"
    return text


def wrap_items(items: list[str], width: int, indent: str = "  ") -> list[str]:
    """Items joined by two spaces into lines of about `width` characters, broken between items only
    (the ones after the first line indented)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += "  " + item
        else:
            lines.append((indent if lines else "") + item)
    return lines


def frame_lines(s: StatsSnapshot, width: int = OVERLAY_WIDTH) -> list[str]:
    """The shown frame's step count and stage times (ms), e.g. "frame, 2 steps: raw 1.2  align 3.4 ..."."""
    if not s.frame_stages_ms:
        return []
    head = "frame" + (f", {steps_text(s.frame_steps)}" if s.frame_steps is not None else "") + ":"
    items = [f"{name} {ms:.1f}" for name, ms in s.frame_stages_ms.items()]
    items[0] = f"{head} {items[0]}"
    items[-1] += " ms"
    return wrap_items(items, width)


def notice_lines(notice: str | None, width: int = OVERLAY_WIDTH) -> list[str]:
    if not notice:
        return []
    return textwrap.wrap(f"note: {notice}", width, subsequent_indent="  ", max_lines=4, placeholder=" …")


def capture_problem(s: StatsSnapshot) -> str | None:
    """While frames are not coming: the capture's state and how long since its last frame; else None."""
    if s.capture_state in ("", "running") and not s.capture_stalled:
        return None
    since = "no frame yet" if s.since_frame_s is None else f"no frame for {s.since_frame_s:.1f} s"
    return f"capture {s.capture_state or 'idle'}: {since}"


def overlay_lines(s: StatsSnapshot) -> list[str]:
    """The few lines drawn over the picture: rates, end-to-end latency, the model, the shown frame's
    steps and stage times and its PSNR against the truth (where known), what is wrong with the capture
    while its frames are not coming, and the processor's notice (information, not an error: the
    banner is for errors)."""
    lines = [
        f"capture {s.capture_fps:5.1f}  engine {s.engine_fps:5.1f}  display {s.display_fps:5.1f} fps",
        f"capture→display  median {_fmt_ms(s.latency_median_ms)}  p99 {_fmt_ms(s.latency_p99_ms)}",
        f"{model_text(s)}  {_fmt_size(s.input_size)} → {_fmt_size(s.output_size)}",
    ]
    lines += frame_lines(s)
    if s.psnr_vs_truth is not None:
        lines.append(f"PSNR vs truth {_fmt_db(s.psnr_vs_truth)}")
    problem = capture_problem(s)
    if problem:
        lines.append(problem)
    if s.paused:
        lines.append("PAUSED")
    lines += notice_lines(s.notice)
    return lines


def counters_text(counters: tuple[tuple[str, int], ...]) -> str:
    """The counters that are not zero, one a line ("rejected bad header 3"); "none" if all are."""
    return "\n".join(f"{name.replace('_', ' ')} {count}" for name, count in counters if count) or "none"


def panel_rows(s: StatsSnapshot) -> list[tuple[str, str]]:
    """(label, value) rows of the stats panel."""
    rows = [
        ("source", f"{s.source} ({s.capture_state})" if s.capture_state else s.source),
        ("capture", f"{s.capture_fps:.1f} fps"),
        ("last frame", "–" if s.since_frame_s is None else f"{s.since_frame_s:.1f} s ago"),
        ("outages", f"{s.outages} ({s.outage_s:.1f} s)" if s.outages else "none"),
        *([("source counters", counters_text(s.source_counters))] if s.source_counters is not None else []),
        ("engine", f"{s.engine_fps:.1f} fps"),
        ("display", f"{s.display_fps:.1f} fps"),
        ("latency median", _fmt_ms(s.latency_median_ms)),
        ("latency p99", _fmt_ms(s.latency_p99_ms)),
        ("model", model_text(s)),
        ("input → output", f"{_fmt_size(s.input_size)} → {_fmt_size(s.output_size)}"),
    ]
    if s.psnr_vs_truth is not None:
        rows.append(("PSNR vs truth", _fmt_db(s.psnr_vs_truth)))
    total = sum(s.stage_ms.values())
    for name, ms in s.stage_ms.items():
        rows.append((f"  {name}", _fmt_ms(ms)))
    if s.stage_ms:
        rows.append(("  engine total", _fmt_ms(total)))
    rows += [
        ("ring dropped", str(s.ring_lost)),
        ("engine skipped", str(s.engine_skipped)),
        ("not displayed", str(s.display_missed)),
    ]
    return rows


class LatencyPlot(QWidget):
    """Capture-to-display latency of every displayed frame over the last `seconds`, drawn with QPainter,
    with 33 ms (one frame at 30 fps) and 50 ms guide lines."""

    def __init__(self, seconds: float = 10.0, parent: QWidget | None = None):
        super().__init__(parent)
        self.seconds = seconds
        self._points: collections.deque[tuple[float, float]] = collections.deque()
        self._now = 0.0
        self.setMinimumSize(220, 110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def add(self, t_s: float, latency_ms: float) -> None:
        """Record one displayed frame (t_s: display time in seconds, any monotonic origin)."""
        self._points.append((t_s, latency_ms))
        self._now = t_s
        cutoff = t_s - self.seconds
        while self._points and self._points[0][0] < cutoff:
            self._points.popleft()

    def advance(self, t_s: float) -> None:
        """Move the time axis on when no frame arrives (the plot scrolls; a stall shows as a gap)."""
        self._now = max(self._now, t_s)
        cutoff = self._now - self.seconds
        while self._points and self._points[0][0] < cutoff:
            self._points.popleft()
        self.update()

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        w, h = self.width(), self.height()
        p.fillRect(self.rect(), QColor(20, 20, 20))
        left, right, top, bottom = 30, 6, 6, 16
        plot = QRectF(left, top, w - left - right, h - top - bottom)
        values = [v for _, v in self._points]
        top_ms = max(60.0, 1.15 * max(values)) if values else 60.0
        top_ms = 20 * math.ceil(top_ms / 20)

        def y(ms: float) -> float:
            return plot.bottom() - min(ms, top_ms) / top_ms * plot.height()

        def x(t: float) -> float:
            return plot.right() - (self._now - t) / self.seconds * plot.width()

        p.setPen(QColor(140, 140, 140))
        for ms in (0, top_ms / 2, top_ms):
            p.drawText(QRectF(0, y(ms) - 7, left - 4, 14), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"{ms:.0f}")
        p.drawText(QRectF(left, h - bottom, plot.width(), bottom), Qt.AlignmentFlag.AlignCenter,
                   f"capture→display ms, last {self.seconds:.0f} s")
        for ms, colour in ((33.3, QColor(90, 160, 90)), (50.0, QColor(200, 120, 60))):
            pen = QPen(colour, 1, Qt.PenStyle.DashLine)
            p.setPen(pen)
            p.drawLine(QPointF(plot.left(), y(ms)), QPointF(plot.right(), y(ms)))
        p.setPen(QPen(QColor(80, 80, 80), 1))
        p.drawRect(plot)
        if len(self._points) >= 2:
            path = QPainterPath()
            prev_t = None
            for t, v in self._points:
                if prev_t is None or t - prev_t > 0.5:  # a stall: break the line
                    path.moveTo(x(t), y(v))
                else:
                    path.lineTo(x(t), y(v))
                prev_t = t
            p.setPen(QPen(QColor(110, 190, 255), 1.5))
            p.drawPath(path)
        p.end()


class RecordIndicator(QWidget):
    """A red dot with the elapsed time, the file size and the frames the recorder could not keep up with."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 0, 6, 0)
        self.dot = QLabel("●")
        self.dot.setStyleSheet("color: #e0302a; font-size: 16px;")
        self.text = QLabel()
        self.text.setStyleSheet("color: #e0302a; font-weight: bold;")
        layout.addWidget(self.dot)
        layout.addWidget(self.text)
        self.setVisible(False)

    def show_status(self, elapsed_s: float, size_bytes: int, dropped: int, stopping: bool = False) -> None:
        self.text.setText(record_text(elapsed_s, size_bytes, dropped, stopping))
        self.setVisible(True)


def record_text(elapsed_s: float, size_bytes: int, dropped: int, stopping: bool = False) -> str:
    m, s = divmod(int(elapsed_s), 60)
    text = f"REC {m:02d}:{s:02d}  {size_bytes / 1e6:.1f} MB  dropped {dropped}"
    return text + "  (finishing…)" if stopping else text


class StatsPanel(QWidget):
    """The side panel: every figure of StatsSnapshot, and the latency plot."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumWidth(260)
        layout = QVBoxLayout(self)
        box = QGroupBox("Live figures")
        self._form = QFormLayout(box)
        self._form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        self._labels: dict[str, QLabel] = {}
        layout.addWidget(box)
        self.plot = LatencyPlot()
        layout.addWidget(self.plot)
        layout.addStretch(1)
        self._rows_shown: list[str] = []

    def show_snapshot(self, s: StatsSnapshot) -> None:
        rows = panel_rows(s)
        names = [name for name, _ in rows]
        if names != self._rows_shown:  # the stages changed (another processor): rebuild the form
            while self._form.rowCount():
                self._form.removeRow(0)
            self._labels = {}
            for name in names:
                value = QLabel()
                value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                self._labels[name] = value
                self._form.addRow(name, value)
            self._rows_shown = names
        for name, value in rows:
            self._labels[name].setText(value)

    def value(self, name: str) -> str:
        """The text shown for a row (for tests and tooling)."""
        return self._labels[name].text() if name in self._labels else ""
