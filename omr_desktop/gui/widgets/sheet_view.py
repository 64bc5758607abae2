"""The aligned sheet image with an overlay of every bubble's decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen, QPixmap, QWheelEvent
from PySide6.QtWidgets import QGraphicsRectItem, QGraphicsScene, QGraphicsView, QWidget

# Bubble states and their colours: outline, fill (with alpha).
MARKED = "marked"
BLANK = "blank"
UNCERTAIN = "uncertain"
ERASED = "erased"
STATE_COLOURS = {
    MARKED: (QColor(0, 140, 60), QColor(0, 170, 70, 90)),
    BLANK: (QColor(120, 120, 120, 110), QColor(0, 0, 0, 0)),
    UNCERTAIN: (QColor(230, 120, 0), QColor(255, 150, 0, 110)),
    ERASED: (QColor(125, 70, 170), QColor(140, 90, 190, 70)),
}

# Zoom limits relative to the image's own pixels.
MIN_ZOOM = 0.05
MAX_ZOOM = 8.0


@dataclass(frozen=True)
class BubbleOverlay:
    """One bubble to draw: its rectangle in page pixels and its state."""

    x: float
    y: float
    width: float
    height: float
    state: str
    question: str


class SheetView(QGraphicsView):
    """Zoomable, pannable sheet image in page coordinates (template canvas px).

    The wheel zooms around the cursor, dragging pans, and ``fit_to_window``
    shows the whole page. The image is scaled by the view, so it stays sharp
    on high-DPI screens when zoomed in.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setRenderHints(
            QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform
        )
        self.setBackgroundBrush(QBrush(QColor(70, 70, 70)))
        self._questions: dict[str, QRectF] = {}
        self._message = ""
        self.setAccessibleName("Sheet image")

    def show_sheet(self, image: QImage, bubbles: Sequence[BubbleOverlay]) -> None:
        """Show ``image`` (already resized to the page) with ``bubbles`` over it."""
        self._scene.clear()
        self._questions.clear()
        self._message = ""
        self._scene.addPixmap(QPixmap.fromImage(image))
        for bubble in bubbles:
            self._add_bubble(bubble)
        self._scene.setSceneRect(QRectF(0, 0, image.width(), image.height()))
        self.fit_to_window()

    def show_message(self, text: str) -> None:
        self._scene.clear()
        self._questions.clear()
        item = self._scene.addText(text)
        item.setDefaultTextColor(QColor(230, 230, 230))
        self._scene.setSceneRect(item.boundingRect())
        self._message = text

    def message_text(self) -> str:
        """Return the message shown in place of a sheet, or "" while one is shown."""
        return self._message

    def _add_bubble(self, bubble: BubbleOverlay) -> None:
        outline, fill = STATE_COLOURS[bubble.state]
        rect = QRectF(bubble.x, bubble.y, bubble.width, bubble.height)
        pen = QPen(outline, 2.0)
        pen.setCosmetic(True)
        item = QGraphicsRectItem(rect)
        item.setPen(pen)
        item.setBrush(QBrush(fill))
        item.setToolTip(f"{bubble.question}: {bubble.state}")
        self._scene.addItem(item)
        known = self._questions.get(bubble.question)
        self._questions[bubble.question] = rect if known is None else known.united(rect)

    def fit_to_window(self) -> None:
        self.fitInView(self._scene.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)

    def center_on_question(self, question: str) -> bool:
        """Scroll so the question's bubbles are in the middle; False if unknown."""
        rect = self._questions.get(question)
        if rect is None:
            return False
        self.centerOn(rect.center())
        return True

    def question_rect(self, question: str) -> QRectF | None:
        return self._questions.get(question)

    def zoom_by(self, factor: float) -> None:
        current = self.transform().m11()
        target = min(max(current * factor, MIN_ZOOM), MAX_ZOOM)
        self.scale(target / current, target / current)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.25**steps)
        event.accept()
