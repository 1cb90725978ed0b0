"""The before/after viewer: a wipe with a draggable divider, or side by side; zoom, pan, fit, 1:1.

Both pictures are drawn in the output's pixel grid: the input ("before") is drawn into the same
rectangle as the output ("after"), nearest-neighbour, so at any zoom an input pixel covers exactly
the output pixels made from it and the two compare pixel for pixel.

Drawing only: numpy BGR or BGRX frames are wrapped as QImages over their own memory (no copy; the
arrays are kept alive while shown), and painting scales them with QPainter. Nothing here enhances
or converts frames; the window feeds `set_frame` from the engine's results, converted to BGRX off
the GUI thread (`display_image`): 32-bit pixels are Qt's own format, which it scales in half the
time of 24-bit BGR (viewer paint 4.4 -> 2.3 ms at 1280x960), and PyQt holds the GIL while it paints.

Geometry is in pure functions (image <-> widget coordinates) so it can be tested without a screen.
"""
from __future__ import annotations

import enum
import math
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np
from PyQt6 import sip
from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PyQt6.QtWidgets import QSizePolicy, QWidget

MIN_SCALE, MAX_SCALE = 1 / 16, 32.0
DIVIDER_GRAB_PX = 8  # how close to the divider a press grabs it


class ViewMode(str, enum.Enum):
    WIPE = "wipe"  # one picture: before left of the divider, after right of it
    SIDE = "side"  # two panes, before | after, zoomed and panned together


# -- pure geometry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float


def fit_scale(image_w: int, image_h: int, area_w: float, area_h: float) -> float:
    """The scale at which the whole image fits the area (screen pixels per image pixel)."""
    if image_w <= 0 or image_h <= 0 or area_w <= 0 or area_h <= 0:
        return 1.0
    return min(area_w / image_w, area_h / image_h)


def clamp_center(cx: float, cy: float, image_w: int, image_h: int, area_w: float, area_h: float,
                 scale: float) -> tuple[float, float]:
    """Keep the view over the image: along an axis where the image is smaller than the area it is
    centred; where it is larger, the view may not run past its edges. Centre in image pixels."""
    out = []
    for c, size, area in ((cx, image_w, area_w), (cy, image_h, area_h)):
        half = area / (2 * scale)
        out.append(size / 2 if 2 * half >= size else min(max(c, half), size - half))
    return out[0], out[1]


def image_rect(image_w: int, image_h: int, area: Rect, scale: float, cx: float, cy: float) -> Rect:
    """Where the image lands on screen: the area's centre shows image point (cx, cy)."""
    x = area.x + area.w / 2 - cx * scale
    y = area.y + area.h / 2 - cy * scale
    return Rect(x, y, image_w * scale, image_h * scale)


def widget_to_image(px: float, py: float, target: Rect, image_w: int, image_h: int) -> tuple[float, float]:
    """A widget point -> image pixel coordinates, through the image's screen rectangle."""
    return (px - target.x) * image_w / target.w, (py - target.y) * image_h / target.h


def zoom_about(cx: float, cy: float, scale: float, new_scale: float, ax: float, ay: float) -> tuple[float, float]:
    """The new view centre so the image point (ax, ay) under the cursor stays under it."""
    f = scale / new_scale
    return ax + (cx - ax) * f, ay + (cy - ay) * f


def _u8_image(a, channels: tuple[int, ...]) -> bool:
    """Whether `a` is an (H, W, C) uint8 array with C in `channels`."""
    return isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] in channels


def display_image(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (H, W, 4) BGRX, the bytes of Qt's native 32-bit format on this
    machine (OpenCV, which releases the GIL: call it off the GUI thread). Anything else, or on a
    big-endian machine where those bytes differ, comes back as it is (bgr_qimage judges it)."""
    if sys.byteorder != "little" or not _u8_image(bgr, (3,)):
        return bgr
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)


def bgr_qimage(bgr: np.ndarray) -> tuple[QImage, np.ndarray]:
    """(H, W, 3) uint8 BGR, or (H, W, 4) BGRX from `display_image` -> (QImage over the same memory,
    the array to keep alive while it is used).

    No copy unless the pixels are not row-contiguous (then one copy, to make them so)."""
    if not _u8_image(bgr, (3, 4) if sys.byteorder == "little" else (3,)):
        desc = f"{bgr.shape} {bgr.dtype}" if isinstance(bgr, np.ndarray) else type(bgr).__name__
        raise ValueError(f"the viewer shows (H, W, 3) uint8 BGR images (or BGRX from display_image), got {desc}")
    c = bgr.shape[2]
    if bgr.strides[2] != 1 or bgr.strides[1] != c:
        bgr = np.ascontiguousarray(bgr)
    h, w = bgr.shape[:2]
    fmt = QImage.Format.Format_RGB32 if c == 4 else QImage.Format.Format_BGR888
    image = QImage(sip.voidptr(bgr.ctypes.data), w, h, bgr.strides[0], fmt)
    return image, bgr


# -- the widget ---------------------------------------------------------------------------------
class BeforeAfterViewer(QWidget):
    """Shows the newest (before, after) pair. Emits `painted(token, t_ns)` after each new pair is
    first drawn, with the token given to set_frame and time.monotonic_ns() at the end of drawing."""

    painted = pyqtSignal(object, object)  # (token, t_ns): object, since ns overflow a C int
    view_changed = pyqtSignal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)  # we fill every pixel ourselves
        self.mode = ViewMode.WIPE
        self.divider = 0.5  # wipe position, as a fraction of the image width
        self._fit = True
        self._scale = 1.0  # used when not fitting
        self._center: tuple[float, float] | None = None  # image pixels; None: the image centre
        self._before: QImage | None = None
        self._after: QImage | None = None
        self._keep: tuple = ()  # the arrays the QImages point into
        self._grid: tuple[int, int] | None = None  # the output size pictures are drawn at
        self._token = None
        self._token_painted = True
        self._overlay: list[str] = []
        self._help: list[tuple[str, str]] | None = None
        self._placeholder = "starting…"
        self._drag: str | None = None  # "divider" | "pan"
        self._drag_from = QPointF()
        self._drag_center = (0.0, 0.0)

    # -- content ----------------------------------------------------------------------------
    def set_frame(self, before: np.ndarray | None, after: np.ndarray | None, token=None) -> None:
        """Show a new pair (either may be None: only the other is drawn). No copies are made."""
        keep = []
        self._before = self._after = None
        if before is not None:
            self._before, b = bgr_qimage(before)
            keep.append(b)
        if after is not None:
            self._after, a = bgr_qimage(after)
            keep.append(a)
        self._keep = tuple(keep)
        self._token, self._token_painted = token, False
        self.update()

    def clear(self, placeholder: str = "") -> None:
        self._before = self._after = None
        self._keep, self._grid = (), None
        self._placeholder = placeholder
        self.update()

    def set_overlay(self, lines: list[str]) -> None:
        if lines != self._overlay:
            self._overlay = list(lines)
            self.update()

    def set_help(self, rows: list[tuple[str, str]] | None) -> None:
        """Show (keys, what they do) rows over the picture, or hide them (None)."""
        self._help = rows
        self.update()

    @property
    def help_visible(self) -> bool:
        return self._help is not None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the output grid both pictures are drawn in (the last output's size;
        the input's own size until an output has been seen)."""
        if self._after is not None:
            self._grid = (self._after.width(), self._after.height())
        if self._grid is not None:
            return self._grid
        if self._before is not None:
            return self._before.width(), self._before.height()
        return None

    # -- view control -------------------------------------------------------------------------
    def set_mode(self, mode: ViewMode) -> None:
        self.mode = ViewMode(mode)
        self.view_changed.emit()
        self.update()

    def toggle_mode(self) -> None:
        self.set_mode(ViewMode.SIDE if self.mode is ViewMode.WIPE else ViewMode.WIPE)

    def fit_to_window(self) -> None:
        self._fit, self._center = True, None
        self.view_changed.emit()
        self.update()

    def zoom_actual(self) -> None:
        """1:1: one output pixel per screen pixel, keeping the current view centre."""
        self._set_scale(1.0)

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self._set_scale(self.scale * factor, anchor)

    def pan_by(self, dx_px: float, dy_px: float) -> None:
        """Move the picture by screen pixels (positive: the picture moves right/down)."""
        size = self.image_size
        if size is None:
            return
        cx, cy = self._view_center(size)
        self._scale, self._fit = self.scale, False
        self._center = (cx - dx_px / self._scale, cy - dy_px / self._scale)
        self.view_changed.emit()
        self.update()

    @property
    def fitted(self) -> bool:
        return self._fit

    @property
    def scale(self) -> float:
        size = self.image_size
        if self._fit and size is not None:
            return self._fit_scale(size)
        return self._scale

    def _set_scale(self, scale: float, anchor: QPointF | None = None) -> None:
        size = self.image_size
        old = self.scale
        scale = min(max(scale, MIN_SCALE), MAX_SCALE)
        if size is not None:
            area = self._areas()[-1]
            cx, cy = self._view_center(size)
            if anchor is not None:
                ax, ay = widget_to_image(anchor.x(), anchor.y(), image_rect(*size, area, old, cx, cy), *size)
                cx, cy = zoom_about(cx, cy, old, scale, ax, ay)
            self._center = (cx, cy)
        self._fit, self._scale = False, scale
        self.view_changed.emit()
        self.update()

    def _fit_scale(self, size: tuple[int, int]) -> float:
        area = self._areas()[-1]
        return fit_scale(size[0], size[1], area.w, area.h)

    def _areas(self) -> list[Rect]:
        w, h = self.width(), self.height()
        if self.mode is ViewMode.SIDE:
            half = (w - 4) / 2
            return [Rect(0, 0, half, h), Rect(w - half, 0, half, h)]
        return [Rect(0, 0, w, h)]

    def _view_center(self, size: tuple[int, int]) -> tuple[float, float]:
        area = self._areas()[-1]
        c = self._center or (size[0] / 2, size[1] / 2)
        return clamp_center(c[0], c[1], size[0], size[1], area.w, area.h, self.scale)

    def divider_x(self) -> float | None:
        """The divider's widget x in wipe mode (None when nothing is shown)."""
        size = self.image_size
        if size is None or self.mode is not ViewMode.WIPE:
            return None
        r = image_rect(*size, self._areas()[0], self.scale, *self._view_center(size))
        return r.x + self.divider * r.w

    # -- painting -----------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        p = QPainter(self)
        try:
            p.fillRect(self.rect(), QColor(24, 24, 24))
            size = self.image_size
            if size is None:
                self._draw_placeholder(p)
            else:
                self._draw_pictures(p, size)
            self._draw_overlay(p)
            if self._help is not None:
                self._draw_help(p)
        finally:
            p.end()
        if not self._token_painted and size is not None:
            self._token_painted = True
            self.painted.emit(self._token, time.monotonic_ns())

    def _draw_pictures(self, p: QPainter, size: tuple[int, int]) -> None:
        scale = self.scale
        cx, cy = self._view_center(size)
        areas = self._areas()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)  # nearest: pixels stay pixels
        if self.mode is ViewMode.WIPE:
            area = areas[0]
            r = image_rect(*size, area, scale, cx, cy)
            target = QRectF(r.x, r.y, r.w, r.h)
            split = r.x + self.divider * r.w
            if self._after is not None:
                p.setClipRect(QRectF(split, 0, self.width() - split, self.height()))
                p.drawImage(target, self._after)
            if self._before is not None:
                p.setClipRect(QRectF(0, 0, max(0.0, split), self.height()))
                p.drawImage(target, self._before)
            p.setClipping(False)
            self._draw_divider(p, split, r)
            self._label(p, QPointF(max(r.x, 0) + 8, self.height() - 10), "before", left=True, max_x=split - 8)
            self._label(p, QPointF(min(r.x + r.w, self.width()) - 8, self.height() - 10), "after", left=False,
                        min_x=split + 8)
        else:
            for area, image, name in ((areas[0], self._before, "before"), (areas[1], self._after, "after")):
                r = image_rect(*size, area, scale, cx, cy)
                p.setClipRect(QRectF(area.x, area.y, area.w, area.h))
                if image is not None:
                    p.drawImage(QRectF(r.x, r.y, r.w, r.h), image)
                p.setClipping(False)
                self._label(p, QPointF(area.x + 8, self.height() - 10), name, left=True)
            p.fillRect(QRectF(areas[0].w, 0, areas[1].x - areas[0].w, self.height()), QColor(90, 90, 90))

    def _draw_divider(self, p: QPainter, x: float, r: Rect) -> None:
        p.setPen(QPen(QColor(255, 255, 255, 220), 2))
        p.drawLine(QPointF(x, max(0.0, r.y)), QPointF(x, min(float(self.height()), r.y + r.h)))
        y = self.height() / 2
        p.setBrush(QColor(255, 255, 255, 220))
        p.drawEllipse(QPointF(x, y), 9, 9)
        p.setPen(QPen(QColor(40, 40, 40), 2))
        p.drawLine(QPointF(x - 4, y), QPointF(x - 1, y - 3))
        p.drawLine(QPointF(x - 4, y), QPointF(x - 1, y + 3))
        p.drawLine(QPointF(x + 4, y), QPointF(x + 1, y - 3))
        p.drawLine(QPointF(x + 4, y), QPointF(x + 1, y + 3))

    def _label(self, p: QPainter, at: QPointF, text: str, left: bool, max_x: float = math.inf,
               min_x: float = -math.inf) -> None:
        fm = p.fontMetrics()
        w = fm.horizontalAdvance(text) + 10
        x = at.x() if left else at.x() - w
        if (left and x + w > max_x) or (not left and x < min_x):
            return  # no room on this side of the divider
        box = QRectF(x, at.y() - fm.height() - 2, w, fm.height() + 4)
        p.fillRect(box, QColor(0, 0, 0, 150))
        p.setPen(QColor(230, 230, 230))
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _draw_overlay(self, p: QPainter) -> None:
        if not self._overlay:
            return
        font = QFont(p.font())
        font.setStyleHint(QFont.StyleHint.Monospace)
        font.setFamily("monospace")
        p.setFont(font)
        fm = p.fontMetrics()
        w = max(fm.horizontalAdvance(line) for line in self._overlay) + 16
        h = fm.height() * len(self._overlay) + 10
        p.fillRect(QRectF(8, 8, w, h), QColor(0, 0, 0, 160))
        p.setPen(QColor(235, 235, 235))
        for i, line in enumerate(self._overlay):
            p.drawText(QPointF(16, 8 + 5 + fm.ascent() + i * fm.height()), line)

    def _draw_placeholder(self, p: QPainter) -> None:
        p.setPen(QColor(170, 170, 170))
        p.drawText(QRectF(self.rect()), Qt.AlignmentFlag.AlignCenter, self._placeholder)

    def _draw_help(self, p: QPainter) -> None:
        rows = self._help or []
        fm = p.fontMetrics()
        key_w = max((fm.horizontalAdvance(k) for k, _ in rows), default=0) + 24
        text_w = max((fm.horizontalAdvance(t) for _, t in rows), default=0)
        w, h = key_w + text_w + 40, fm.height() * (len(rows) + 2) + 24
        x, y = (self.width() - w) / 2, (self.height() - h) / 2
        p.fillRect(QRectF(x, y, w, h), QColor(10, 10, 10, 215))
        p.setPen(QColor(255, 255, 255))
        bold = QFont(p.font())
        bold.setBold(True)
        p.setFont(bold)
        p.drawText(QPointF(x + 20, y + 12 + fm.ascent()), "Keyboard shortcuts  (H, F1 or ? to close)")
        p.setFont(QFont(p.font().family()))
        for i, (keys, what) in enumerate(rows):
            ty = y + 12 + fm.ascent() + (i + 1.5) * fm.height()
            p.setPen(QColor(255, 214, 120))
            p.drawText(QPointF(x + 20, ty), keys)
            p.setPen(QColor(230, 230, 230))
            p.drawText(QPointF(x + 20 + key_w, ty), what)

    # -- mouse ----------------------------------------------------------------------------------
    def _near_divider(self, x: float) -> bool:
        d = self.divider_x()
        return d is not None and abs(x - d) <= DIVIDER_GRAB_PX

    def mousePressEvent(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton and event.button() != Qt.MouseButton.MiddleButton:
            return
        pos = event.position()
        size = self.image_size
        if size is None:
            return
        if event.button() == Qt.MouseButton.LeftButton and self._near_divider(pos.x()):
            self._drag = "divider"
        else:
            self._drag = "pan"
            self._drag_from = pos
            self._drag_center = self._view_center(size)
            self.setCursor(Qt.CursorShape.ClosedHandCursor)

    def mouseMoveEvent(self, event) -> None:
        pos = event.position()
        size = self.image_size
        if self._drag == "divider" and size is not None:
            r = image_rect(*size, self._areas()[0], self.scale, *self._view_center(size))
            self.divider = min(1.0, max(0.0, (pos.x() - r.x) / r.w))
            self.update()
        elif self._drag == "pan" and size is not None:
            d = pos - self._drag_from
            if self._fit and (abs(d.x()) > 2 or abs(d.y()) > 2):
                self._scale, self._fit = self.scale, False
            self._center = (self._drag_center[0] - d.x() / self.scale, self._drag_center[1] - d.y() / self.scale)
            self.update()
        elif self._near_divider(pos.x()):
            self.setCursor(Qt.CursorShape.SplitHCursor)
        else:
            self.unsetCursor()

    def mouseReleaseEvent(self, event) -> None:
        if self._drag == "pan":
            self.unsetCursor()
            self.view_changed.emit()
        self._drag = None

    def mouseDoubleClickEvent(self, event) -> None:
        if self._fit:
            self._set_scale(1.0, event.position())
        else:
            self.fit_to_window()

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.25**steps, event.position())
