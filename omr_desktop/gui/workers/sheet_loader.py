"""Load one sheet for Panel C on a pool thread: rows, image, overlay."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QImageReader

from omr_desktop.db.database import Database
from omr_desktop.db.queries import SheetDetail, load_sheet_detail
from omr_desktop.engine.profile import DecisionSettings
from omr_desktop.gui.models.sheet_overlay import (
    bubble_overlays,
    profile_settings,
    sheet_template,
)
from omr_desktop.gui.widgets.sheet_view import BubbleOverlay


@dataclass(frozen=True)
class LoadedSheet:
    """A sheet ready to show; ``image`` is None when the file cannot be read."""

    detail: SheetDetail
    image: QImage | None
    overlays: tuple[BubbleOverlay, ...]
    decision: DecisionSettings


def load_sheet(database: Database, sheet_id: int) -> LoadedSheet | None:
    """Read the sheet's rows and image; runs on a pool thread, never the GUI's.

    QImage (unlike QPixmap) may be used off the GUI thread. The image is
    decoded by content, since some scans carry the wrong extension, and
    resized to the template's page as the engine reads it.
    """
    with database.reused() as conn:
        detail = load_sheet_detail(conn, sheet_id)
    if detail is None:
        return None
    template = sheet_template(detail)
    reader = QImageReader(detail.image_path)
    reader.setDecideFormatFromContent(True)
    image = reader.read()
    page: QImage | None = None
    if not image.isNull():
        page = image.scaled(
            template.page_width,
            template.page_height,
            Qt.AspectRatioMode.IgnoreAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
    overlays = tuple(bubble_overlays(detail, template))
    return LoadedSheet(detail, page, overlays, profile_settings(detail).decision)
