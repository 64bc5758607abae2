"""Which exceptions carry a message meant for the user.

These errors name the value that failed and what to do, so the command line
prints their message alone; anything else is a bug and gets a traceback in
the log file.
"""

from __future__ import annotations

import importlib

# (module, class) pairs, imported on demand so that this module pulls in
# neither psycopg nor the engine by itself.
_EXPECTED = (
    ("omr_desktop.config", "ConfigError"),
    ("omr_desktop.resources", "MissingResourceError"),
    ("omr_desktop.db.database", "DatabaseUnavailableError"),
    ("omr_desktop.db.embedded", "EmbeddedDatabaseError"),
    ("omr_desktop.db.migrate", "MigrationError"),
    ("omr_desktop.db.backup", "BackupError"),
    ("omr_desktop.db.server_binaries", "ServerBinariesError"),
    ("omr_desktop.db.service_account", "ServiceAccountError"),
    ("omr_desktop.db.file_lock", "LockTimeoutError"),
    ("omr_desktop.db.batch_store", "BatchExistsError"),
    ("omr_desktop.pipeline.importer", "ImportInputError"),
    ("omr_desktop.pipeline.demo", "DemoImagesError"),
    ("omr_desktop.db.reprocess_store", "SheetsBusyError"),
    ("omr_desktop.db.history_store", "UndoError"),
    ("omr_desktop.db.export", "ExportError"),
    ("omr_desktop.db.export", "ExportWriteError"),
    ("omr_desktop.db.corrections", "CorrectionError"),
    ("omr_desktop.pipeline.reprocess", "ReprocessError"),
    ("omr_desktop.pipeline.task_manager", "TaskRequestError"),
    ("omr_desktop.engine.template", "TemplateError"),
    ("omr_desktop.engine.profile", "ProfileError"),
    ("omr_desktop.engine.image", "SheetImageError"),
    ("psycopg", "OperationalError"),
)


def expected_error_types() -> tuple[type[BaseException], ...]:
    """Return the exception classes whose message is written for the user."""
    found: list[type[BaseException]] = []
    for module_name, class_name in _EXPECTED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def is_expected_error(exc: BaseException) -> bool:
    """Tell whether ``exc``'s message is meant for the user as it is."""
    return isinstance(exc, expected_error_types())
