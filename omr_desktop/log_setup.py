"""Configure logging once for the whole process: console and a rotating file.

Called from the entry point only; library modules just call
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FILE_NAME = "omr-desktop.log"

# 5 MB a file and five old files keep about a month of a busy editor's log.
MAX_LOG_BYTES = 5 * 1024 * 1024
BACKUP_COUNT = 5

_MARKER = "omr_desktop_handler"

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level_name: str, folder: Path) -> Path | None:
    """Send log records at ``level_name`` and above to stderr and a rotating file.

    Returns:
        The log file's path, or ``None`` when the folder cannot be created
        (the console handler still works, and a warning says why).
    """
    root = logging.getLogger()
    root.setLevel(level_name)
    # Replace only the handlers a previous call added, so that calling this
    # twice (as tests do) neither duplicates output nor drops other handlers.
    for handler in list(root.handlers):
        if getattr(handler, _MARKER, False):
            root.removeHandler(handler)
            handler.close()

    console = logging.StreamHandler(sys.stderr)
    # The console shows warnings and errors unless the user asked for more;
    # progress reaches the user through the command's own output.
    console.setLevel(level_name if level_name == "DEBUG" else "WARNING")
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    # A record logged with extra={"console": False} was already shown to the
    # user in another form; it goes to the file only.
    console.addFilter(lambda record: getattr(record, "console", True))
    setattr(console, _MARKER, True)
    root.addHandler(console)

    path = folder / LOG_FILE_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=MAX_LOG_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "Cannot write the log file %s (%s); logging to the console only",
            path,
            exc,
        )
        return None
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    setattr(file_handler, _MARKER, True)
    root.addHandler(file_handler)
    return path
