"""Download the real models from the Hugging Face hub: a token for the gated Llama, Check (files, total size,
free disk) before anything downloads, then Download with progress and Cancel.

The network work runs on a worker thread (`JobRunner`); progress comes back through a `ProgressRelay`. A
cancelled download keeps its `.part` files, and the next Download resumes them. Models go to
`<data_dir>/models/<model key>`; nothing else in the app touches the network.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.formatting import format_bytes
from app.jobs import JobRunner, ProgressRelay
from app.views.messages import InlineMessage, error_details, error_summary
from storyloom.downloads import (
    LLAMA3_8B_INSTRUCT,
    SDXL_BASE,
    DownloadCancelledError,
    DownloadManager,
    DownloadPlan,
    DownloadProgress,
    HubModel,
    HubSource,
)

# Settings field role -> the hub model that fills it.
ROLES: dict[str, HubModel] = {"llm": LLAMA3_8B_INSTRUCT, "sdxl": SDXL_BASE}
ROLE_LABELS = {"llm": "the LLM", "sdxl": "images"}
PROGRESS_STEPS = 1000

ManagerFactory = Callable[[], DownloadManager]


@dataclass(frozen=True)
class ModelCheck:
    """One model's plan, where it goes, and how much of it is still to fetch."""

    role: str
    model: HubModel
    plan: DownloadPlan
    dest: Path
    missing_bytes: int

    def location(self) -> Path:
        """What the settings point at: the model folder, or SDXL's single checkpoint file."""
        weights = [f.path for f in self.plan.files if f.path.endswith(".safetensors")]
        if self.role == "sdxl" and len(weights) == 1:
            return self.dest / weights[0]
        return self.dest


@dataclass(frozen=True)
class CheckResult:
    """What Check found: every selected model's plan and the free disk space where they go."""

    checks: tuple[ModelCheck, ...]
    folder: Path
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(c.plan.total_bytes for c in self.checks)

    @property
    def missing_bytes(self) -> int:
        return sum(c.missing_bytes for c in self.checks)

    @property
    def has_room(self) -> bool:
        return self.free_bytes >= self.missing_bytes

    def describe(self) -> str:
        lines = [c.plan.describe() for c in self.checks]
        lines.append(
            f"Total {format_bytes(self.total_bytes)} ({self.total_bytes:,} bytes); still to download "
            f"{format_bytes(self.missing_bytes)}; free disk in {self.folder}: {format_bytes(self.free_bytes)}."
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class OverallProgress:
    """A download's progress over every model of the check: the current model's report plus the total."""

    title: str
    bytes_done: int
    bytes_total: int
    current: DownloadProgress


class ProgressThrottle:
    """Passes a report on when it moves the bar a step, starts another file, ends the download, or
    `interval_s` has passed: a many-GB download then updates the GUI a few thousand times, not once a chunk."""

    def __init__(
        self,
        report: Callable[[OverallProgress], None],
        steps: int = PROGRESS_STEPS,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report
        self._steps = steps
        self._interval_s = interval_s
        self._clock = clock
        self._last: tuple[str, int] | None = None
        self._last_time = 0.0

    def __call__(self, p: OverallProgress) -> None:
        now = self._clock()
        key = (p.current.file, p.bytes_done * self._steps // p.bytes_total if p.bytes_total else 0)
        if key != self._last or p.bytes_done >= p.bytes_total or now - self._last_time >= self._interval_s:
            self._last, self._last_time = key, now
            self._report(p)


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_models(
    roles: Sequence[str], models_dir: Path, token: str | None, endpoint: str | None, manager_factory: ManagerFactory
) -> CheckResult:
    """Worker thread: list each model's files and sizes (gated models: check the token's access too)."""
    checks = []
    with HubSource(endpoint=endpoint, token=token) as hub, manager_factory() as manager:
        for role in roles:
            model = ROLES[role]
            dest = models_dir / model.key
            plan = hub.plan(model)
            checks.append(ModelCheck(role, model, plan, dest, manager.missing_bytes(plan, dest)))
    return CheckResult(tuple(checks), models_dir, free_disk_bytes(models_dir))


def download_models(
    result: CheckResult,
    manager_factory: ManagerFactory,
    report: Callable[[OverallProgress], None],
    cancel: threading.Event,
) -> dict[str, Path]:
    """Worker thread: fetch every checked model in turn; returns {role: location for the settings}."""
    report = ProgressThrottle(report)
    offset = 0
    with manager_factory() as manager:
        for check in result.checks:

            def on_progress(p: DownloadProgress, title: str = check.model.title, offset: int = offset) -> None:
                report(OverallProgress(title, offset + p.bytes_done, result.total_bytes, p))

            manager.download(check.plan, check.dest, on_progress=on_progress, cancel=cancel)
            offset += check.plan.total_bytes
    return {c.role: c.location() for c in result.checks}


class ModelDownloadPanel(QWidget):
    """Token, model choice, Check, Download, Cancel, progress and inline errors.

    `downloaded(dict[str, Path])`: {"llm": folder, "sdxl": checkpoint file} for the models just fetched.
    Call `shutdown()` before the panel goes away (cancels a running download and waits for it).
    """

    downloaded = Signal(object)

    def __init__(
        self,
        data_dir: Path,
        endpoint: str | None = None,
        manager_factory: ManagerFactory = DownloadManager,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.models_dir = data_dir / "models"
        self.cancel_requested = threading.Event()  # set from any thread; the transfer stops at the next chunk
        self._endpoint = endpoint
        self._manager_factory = manager_factory
        self._checked: CheckResult | None = None
        self._busy = False
        self._details = ""
        self._jobs = JobRunner(self, num_workers=1)
        self.relay = ProgressRelay(self._show_progress, self)

        self.model_checks = {role: QCheckBox(f"{model.title} ({ROLE_LABELS[role]})") for role, model in ROLES.items()}
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("hf_… (a 'read' token; or set HF_TOKEN)")
        self.token_edit.setClearButtonEnabled(True)
        with HubSource(endpoint=endpoint) as hub:  # builds the hint text only; no request is made
            why = hub.access_hint(LLAMA3_8B_INSTRUCT)
        self.token_hint = QLabel(
            f"Why a token: {why} {SDXL_BASE.title} needs no token. The token is used for these downloads "
            "only and is not saved.",
            objectName="hint",
        )
        self.token_hint.setWordWrap(True)
        self.token_hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.check_button = QPushButton("Check")
        self.check_button.setToolTip("List the files, their total size and the free disk space; downloads nothing")
        self.download_button = QPushButton("Download", objectName="primary")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop; the partial files are kept and the next Download resumes them")
        self.plan_view = QPlainTextEdit()
        self.plan_view.setReadOnly(True)
        self.plan_view.setFixedHeight(120)
        self.plan_view.hide()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.progress_bar.hide()
        self.status_label = QLabel(objectName="hint")
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message = InlineMessage()
        self.copy_button = QPushButton("Copy details")
        self.copy_button.setToolTip("Copy the full error report to the clipboard")
        self.copy_button.hide()

        choice = QHBoxLayout()
        for box in self.model_checks.values():
            box.setChecked(True)
            choice.addWidget(box)
            box.toggled.connect(self._forget_check)
        choice.addStretch(1)
        form = QFormLayout()
        form.addRow("Models", choice)
        form.addRow("Hugging Face token", self.token_edit)
        form.addRow("Saved to", QLabel(str(self.models_dir), objectName="hint"))
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.check_button, self.download_button, self.cancel_button):
            buttons.addWidget(button)
        message_row = QHBoxLayout()
        message_row.addWidget(self.message, 1)
        message_row.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.token_hint)
        layout.addLayout(buttons)
        layout.addWidget(self.plan_view)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addLayout(message_row)

        self.token_edit.textChanged.connect(self._forget_check)
        self.check_button.clicked.connect(self.check)
        self.download_button.clicked.connect(self.download)
        self.cancel_button.clicked.connect(self.cancel)
        self.copy_button.clicked.connect(self.copy_details)
        self._update_buttons()

    def selected_roles(self) -> list[str]:
        return [role for role, box in self.model_checks.items() if box.isChecked()]

    def check(self) -> None:
        """List the selected models' files and sizes on a worker thread; Download is enabled when it succeeds."""
        roles = self.selected_roles()
        if self._busy or not roles:
            return
        token = self.token_edit.text().strip() or None
        self._forget_check()
        self._start("Checking the Hugging Face hub…")
        self._jobs.run(
            lambda: check_models(roles, self.models_dir, token, self._endpoint, self._manager_factory),
            on_done=self._on_checked,
            on_error=lambda exc: self._on_failed("Check failed", exc),
        )

    def download(self) -> None:
        """Fetch what Check listed on a worker thread (finished files are skipped, partial ones resumed)."""
        if self._busy or self._checked is None:
            return
        result = self._checked
        self.cancel_requested.clear()
        self._start("Starting the download…", downloading=True)
        self.progress_bar.show()
        self._jobs.run(
            lambda: download_models(result, self._manager_factory, self.relay.report, self.cancel_requested),
            on_done=self._on_downloaded,
            on_error=lambda exc: self._on_failed("Download failed", exc),
        )

    def cancel(self) -> None:
        self.cancel_requested.set()
        self.status_label.setText("Cancelling…")
        self.cancel_button.setEnabled(False)

    def copy_details(self) -> None:
        QGuiApplication.clipboard().setText(self._details)

    @property
    def error_details(self) -> str:
        """The full report of the last error (message and traceback), as "Copy details" copies it."""
        return self._details

    @property
    def is_busy(self) -> bool:
        return self._busy

    def shutdown(self) -> None:
        """Cancel a running download (its partial files stay) and wait for the worker to stop."""
        self.cancel_requested.set()
        self._jobs.close(wait=True)

    # --- results, on the GUI thread ---------------------------------------------------------------------
    def _on_checked(self, result: CheckResult) -> None:
        self._busy = False
        self._checked = result
        self.plan_view.setPlainText(result.describe())
        self.plan_view.show()
        self.status_label.setText(
            f"{format_bytes(result.missing_bytes)} to download, {format_bytes(result.free_bytes)} free."
        )
        if result.has_room:
            self.message.show_info("Ready: press Download. You can cancel at any time and resume later.")
        else:
            self.message.show_error(
                f"Not enough disk space in {result.folder}: {format_bytes(result.missing_bytes)} needed, "
                f"{format_bytes(result.free_bytes)} free. Free some space or choose another data folder."
            )
        self._update_buttons()

    def _show_progress(self, p: OverallProgress) -> None:
        if not self._busy:
            return  # a report queued before the job ended
        self.status_label.setText(
            f"{format_bytes(p.bytes_done)} of {format_bytes(p.bytes_total)} · "
            f"{format_bytes(int(p.current.speed_bps))}/s · {p.current.file} ({p.title})"
        )
        fraction = p.bytes_done / p.bytes_total if p.bytes_total else 0.0
        self.progress_bar.setValue(round(min(1.0, fraction) * PROGRESS_STEPS))

    def _on_downloaded(self, locations: dict[str, Path]) -> None:
        self._busy = False
        self.progress_bar.setValue(PROGRESS_STEPS)
        where = "; ".join(f"{ROLES[role].title}: {path}" for role, path in locations.items())
        self.status_label.setText("Download complete.")
        self.message.show_info(f"Downloaded and verified. {where}")
        self._update_buttons()
        self.downloaded.emit(locations)

    def _on_failed(self, what: str, exc: BaseException) -> None:
        self._busy = False
        if isinstance(exc, DownloadCancelledError):
            self.status_label.setText("Cancelled.")
            self.message.show_info(
                f"Download cancelled. The partial files are kept in {self.models_dir}; Download resumes them."
            )
        else:
            self.status_label.setText(f"{what}.")
            self.message.show_error(f"{what}: {error_summary(exc)}")
            self._details = f"{what}: {error_details(exc)}"
            self.copy_button.show()
        self._update_buttons()

    # --- state ------------------------------------------------------------------------------------------
    def _start(self, status: str, downloading: bool = False) -> None:
        self._busy = True
        self._details = ""
        self.copy_button.hide()
        self.message.clear_message()
        self.status_label.setText(status)
        self._update_buttons(downloading)

    def _forget_check(self) -> None:
        """A changed token or model choice needs a new Check before Download."""
        if self._busy:
            return
        self._checked = None
        self.plan_view.hide()
        self._update_buttons()

    def _update_buttons(self, downloading: bool = False) -> None:
        idle = not self._busy
        self.check_button.setEnabled(idle and bool(self.selected_roles()))
        self.download_button.setEnabled(idle and self._checked is not None)
        self.cancel_button.setEnabled(downloading)
        self.token_edit.setEnabled(idle)
        for box in self.model_checks.values():
            box.setEnabled(idle)
        self._fit_window()

    def _fit_window(self) -> None:
        """Grow the window when a message or the file list appears (wrapped text does not grow it by itself)."""
        window = self.window()
        layout = window.layout()
        if layout is not None and layout.hasHeightForWidth():
            needed = layout.totalHeightForWidth(window.width())
            if needed > window.height():
                window.resize(window.width(), needed)


class ModelDownloadDialog(QDialog):
    """The download panel in its own window; closing it cancels a running download (partial files stay)."""

    def __init__(self, data_dir: Path, endpoint: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Download models from Hugging Face")
        self.setMinimumWidth(680)
        self.panel = ModelDownloadPanel(data_dir, endpoint=endpoint)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.panel)
        layout.addWidget(buttons)

    def done(self, result: int) -> None:
        if self.panel.is_busy:
            self.panel.cancel()
        super().done(result)
