"""The engine settings dialog: local threads, or a cluster at a broker URL."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from omr_desktop import config


class EngineDialog(QDialog):
    """Ask where reprocess tasks run; ``choice()`` returns the chosen engine."""

    def __init__(
        self, current: config.EngineChoice, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Reprocess engine")
        self._init_widgets(current)
        self._init_layout()
        self._on_kind_toggled()

    def _init_widgets(self, current: config.EngineChoice) -> None:
        self.local_button = QRadioButton("Local threads (this workstation)")
        self.cluster_button = QRadioButton("Cluster (Celery workers over Redis)")
        self._group = QButtonGroup(self)
        self._group.addButton(self.local_button)
        self._group.addButton(self.cluster_button)
        cluster = current.kind == config.ENGINE_CLUSTER
        self.cluster_button.setChecked(cluster)
        self.local_button.setChecked(not cluster)
        self.broker_edit = QLineEdit(current.broker_url or "")
        self.broker_edit.setPlaceholderText("redis://10.0.0.5:6379/0")
        self.note = QLabel(
            "The cluster needs a PostgreSQL every worker reaches "
            "(OMR_DATABASE_URL) and image paths every worker can read."
        )
        self.note.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.cluster_button.toggled.connect(self._on_kind_toggled)

    def _init_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Broker URL", self.broker_edit)
        layout = QVBoxLayout(self)
        layout.addWidget(self.local_button)
        layout.addWidget(self.cluster_button)
        layout.addLayout(form)
        layout.addWidget(self.note)
        layout.addWidget(self.buttons)

    def _on_kind_toggled(self) -> None:
        self.broker_edit.setEnabled(self.cluster_button.isChecked())

    def choice(self) -> config.EngineChoice:
        """Return the engine the dialog shows."""
        kind = (
            config.ENGINE_CLUSTER
            if self.cluster_button.isChecked()
            else config.ENGINE_LOCAL
        )
        broker = self.broker_edit.text().strip() or None
        return config.EngineChoice(kind, broker)
