"""SAMMed: Segment Anything for CT/MR annotation in 3D Slicer.

A thin shell: the panel (Widget), a facade over SAMMedSlicerLib (Logic) and the in-Slicer self-test. All behaviour
(prompts, worker, segments, undo) lives in the Qt-free SAMMedSlicerLib. Importing this file does no work.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from typing import Any, Optional

import ctk  # noqa: F401 - loaded for the .ui file's ctk widgets
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SAMMedSlicerLib.batch import BatchJob, FinishedCase, batch_command
from SAMMedSlicerLib.client import SAMMedClientError
from SAMMedSlicerLib.parameters import Parameters, segment_editor_node
from SAMMedSlicerLib.placing import placing_role, start_placing, stop_placing
from SAMMedSlicerLib.server_process import WorkerError
from SAMMedSlicerLib.session import Session, create_prompt_nodes, slice_of_view
from SAMMedSlicerLib.session_status import SessionStatus, advance_task, fetch_session_status
from SAMMedSlicerLib.worker import SOURCES, Handover, Worker, WorkerInfo, local_launch
from SAMMedSlicerLib.worker_install import InstallRun, install_plan

SETTINGS_PREFIX = "SAMMed/"
SHORTCUTS = {"Shift+A": "positivePoints", "Shift+S": "negativePoints", "Shift+B": "box", "Shift+L": "lasso",
             "Shift+D": "scribble"}
PROMPT_ROLES = ("positivePoints", "negativePoints", "box", "lasso", "scribble")
POLL_MS = 500
HANDOVER = "SAMMedSlicerWorkerHandover"  # slicer.modules attribute: the running worker, from Reload to the new widget
SOURCE_LABELS = {"slicer": "Slicer's Python", "python": "Another Python", "remote": "Remote worker"}
DRAIN_MS = 50  # finished predictions are written into the segment this often (main thread)


class SAMMedSlicer(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.parent.title = "SAMMed"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SAMMed developers"]
        self.parent.helpText = (
            "Segment CT/MR structures with Segment Anything: place a box, +/− points, a lasso or a scribble in any "
            "slice view (a lasso or scribble ends with a right-click); the selected segment updates on that slice. "
            "Ctrl+Z undoes the last prompt."
        )
        self.parent.acknowledgementText = (
            "Uses LiteMedSAM / Segment Anything models run by the sammed-server worker."
        )


def setting(name: str, default: str = "") -> str:
    return str(qt.QSettings().value(SETTINGS_PREFIX + name, default) or default)


def set_setting(name: str, value: str) -> None:
    qt.QSettings().setValue(SETTINGS_PREFIX + name, value)


def installed_version(package: str) -> Optional[str]:
    """Version of ``package`` in this (Slicer's) Python, None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class SAMMedSlicerLogic(ScriptedLoadableModuleLogic):
    """Facade the widget and tests use: the worker (:class:`Worker`, three ways) and the prompt session."""

    def __init__(self) -> None:
        super().__init__()
        self.worker = Worker()
        self.session: Optional[Session] = None

    @property
    def client(self) -> Any:
        return self.worker.client

    @staticmethod
    def parameters() -> Parameters:
        return Parameters.find_or_create(slicer.mrmlScene)

    @staticmethod
    def module_dir() -> str:
        return os.path.dirname(os.path.abspath(__file__))

    def server_source(self) -> str:
        """The SAMMedServer folder: beside the module when installed, at the repository root in a source tree."""
        for candidate in (os.path.join(self.module_dir(), "SAMMedServer"),
                          os.path.join(os.path.dirname(self.module_dir()), "SAMMedServer")):
            if os.path.isfile(os.path.join(candidate, "pyproject.toml")):
                return candidate
        raise WorkerError("the SAMMedServer sources are not installed with this extension")

    def install(self, source: str, python: str) -> InstallRun:
        """Start installing the worker (``slicer``: into Slicer's Python; ``python``: into the named one); poll the
        returned run from a timer. Raises WorkerError with what to do where it cannot work."""
        steps, environment = install_plan(
            source, self.server_source(), python, startup_environment=slicer.util.startupEnvironment(),
            torch_version=installed_version("torch"), pytorch_extension=hasattr(slicer.modules, "pytorchutils"),
            slicer_home=slicer.app.slicerHome,
        )
        return InstallRun(steps, environment)

    def start_local_worker(self, source: str, python: str, port: int, model: Optional[str] = None) -> None:
        """(Re)start the local worker; returns at once, ``worker.on_connected`` fires when it answers."""
        self.end_session()
        launch = local_launch(source, port, python, model, startup_environment=slicer.util.startupEnvironment(),
                              slicer_home=slicer.app.slicerHome)
        self.worker.start_local(launch, port)

    def start_batch(self, source: str, python: str, model_id: str, folder: str, run_folder: str) -> BatchJob:
        """Run ``sammed-server batch`` over ``folder`` as a child process in the local worker's environment."""
        launch = local_launch(source, 0, python, startup_environment=slicer.util.startupEnvironment(),
                              slicer_home=slicer.app.slicerHome)
        job = BatchJob(batch_command(launch.command[0], model_id, [folder], run_folder), run_folder, env=launch.env,
                       popen=functools.partial(subprocess.Popen, creationflags=launch.creationflags))
        job.start()
        return job

    def connect(self, url: str, token: Optional[str] = None) -> None:
        """Use the worker at ``url``; returns at once, ``worker.on_connected`` fires when it answers."""
        self.end_session()
        self.worker.connect(url, token)

    def stop_worker(self) -> None:
        self.end_session()
        self.worker.stop()

    def start_session(self, on_error: Any = None, on_notice: Any = None) -> Session:
        """A prompt session on the connected worker (replacing the previous one)."""
        if self.client is None:
            raise WorkerError("start the worker or test the connection first")
        self.end_session()
        model = self.parameters().get("model") or None
        self.session = Session(slicer.mrmlScene, self.client, model=model, editor_node=segment_editor_node(slicer.mrmlScene),
                               on_error=on_error, on_notice=on_notice, on_worker_lost=self.worker.report_lost)
        return self.session

    def end_session(self) -> None:
        """Close the session: its running task is cancelled (on a thread) and its preview removed."""
        session, self.session = self.session, None
        if session is None:
            return
        if session.task is not None and session.task.state == "running":
            self.worker.calls.submit("cancel", session.cancel_task)
        session.discard_pending()
        session.close()

    def shutdown(self) -> None:
        """Slicer quits: end the session and stop the local worker."""
        self.end_session()
        self.worker.shutdown()


class SAMMedSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Every blocking call (start, connect, status, install) runs off the main thread; one timer
    (``onPoll``) picks up the results."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SAMMedSlicerLogic] = None
        self.params: Optional[Parameters] = None
        self.shortcuts: list[Any] = []
        self.timer: Optional[Any] = None
        self.install: Optional[InstallRun] = None
        self.drainTimer: Optional[Any] = None
        self._predictionStatusShown = False
        self._focus: Optional[tuple[int, int]] = None
        self._encoderTypes: dict[str, str] = {}
        self._taskRunning = False
        self.batch: Optional[BatchJob] = None
        self._loadedCases: set[str] = set()
        self._pollError = ""

    def setup(self) -> None:
        super().setup()
        panel = slicer.util.loadUI(self.resourcePath("UI/SAMMedSlicer.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMedSlicerLogic()
        worker = self.logic.worker
        worker.on_connected, worker.on_status, worker.on_error = self._connected, self._status, self._workerError

        for source in SOURCES:
            self.ui.workerSourceComboBox.addItem(SOURCE_LABELS[source], source)
        self.ui.pythonPathLineEdit.text = setting("python")
        self.ui.workerTokenLineEdit.text = setting("token")
        self.ui.volumeSelector.currentNodeChanged.connect(self.onVolumeChanged)
        self.ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.segmentSelector.currentSegmentChanged.connect(self.onSegmentChanged)
        self.ui.modelComboBox.currentTextChanged.connect(self.onModelChanged)
        self.ui.workerSourceComboBox.currentIndexChanged.connect(self.onWorkerSourceChanged)
        self.ui.workerUrlLineEdit.editingFinished.connect(lambda: self._set("workerUrl", self.ui.workerUrlLineEdit.text))
        self.ui.startWorkerButton.clicked.connect(self.onStartWorker)
        self.ui.stopWorkerButton.clicked.connect(self.onStopWorker)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.installWorkerButton.clicked.connect(self.onInstallWorker)
        for role, button in self._placeButtons().items():
            button.clicked.connect(lambda checked, r=role: self.placePrompt(r) if checked else self.stopPlacing())
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.clearPromptsButton.clicked.connect(self.onClearPrompts)
        self.ui.promptTypeComboBox.addItems(["point", "box", "composite"])
        self.ui.trainPromptButton.clicked.connect(self.onTrainPrompt)
        self.ui.promptEncoderComboBox.currentIndexChanged.connect(self.onPromptEncoderChanged)
        for direction, button in (("down", self.ui.propagateDownButton), ("both", self.ui.propagateBothButton),
                                  ("up", self.ui.propagateUpButton)):
            button.clicked.connect(lambda checked=False, d=direction: self.onPropagate(d))
        self.ui.autoSapnetButton.clicked.connect(self.onAutoSegmentSapnet)
        self.ui.autoModelButton.clicked.connect(self.onAutoSegmentModel)
        self.ui.cancelTaskButton.clicked.connect(self.onCancelTask)
        self.ui.applyResultButton.clicked.connect(self.onApplyResult)
        self.ui.discardResultButton.clicked.connect(self.onDiscardResult)
        self.ui.batchStartButton.clicked.connect(self.onStartBatch)
        self.ui.batchCancelButton.clicked.connect(self.onCancelBatch)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent, self.onInteractionModeChanged)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        # after the session's own observer (priority 0), which adopts the ROI Slicer makes for the next box
        self.addObserver(selection, selection.ActivePlaceNodeIDChangedEvent, self.onInteractionModeChanged, priority=-1.0)
        slicer.app.connect("aboutToQuit()", self.logic.shutdown)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onPoll)
        self.timer.start()  # runs while the panel exists: a start, install or lost worker is noticed in any module
        self.drainTimer = qt.QTimer()  # runs while the module lives: predictions in flight land after exit() too
        self.drainTimer.setInterval(DRAIN_MS)
        self.drainTimer.timeout.connect(self.onDrainPredictions)
        self.drainTimer.start()
        self.initializeParameterNode()
        self._takeOverWorker()

    def cleanup(self) -> None:
        """Reload or exit: stop observing and polling. The worker is not stopped here: Reload hands it to the new
        panel (``onReload``), and Slicer's ``aboutToQuit`` stops it (after a hand-over that finds nothing to stop)."""
        self.removeObservers()
        if self.timer is not None:
            self.timer.stop()
            self.drainTimer.stop()
        self._removeShortcuts()
        if self.logic is not None:
            self.logic.end_session()

    def onReload(self) -> None:
        """Developer Reload: keep the running worker for the new panel and re-import every SAMMedSlicerLib module."""
        import SAMMedSlicerLib

        if self.logic is not None:
            self.logic.end_session()
            handover = self.logic.worker.detach()
            if handover is not None:
                setattr(slicer.modules, HANDOVER, handover)
        SAMMedSlicerLib.forget_modules()
        super().onReload()

    def _takeOverWorker(self) -> None:
        handover: Optional[Handover] = getattr(slicer.modules, HANDOVER, None)
        if handover is not None:
            delattr(slicer.modules, HANDOVER)
            self.logic.worker.attach(handover)

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
        self.stopPlacing()  # place mode (and its persistence) does not outlive the panel

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.stopPlacing()
        self.logic.end_session()
        self._resetTaskUi()

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # parameter node ------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.params = self.logic.parameters()
        missing = [role for role in PROMPT_ROLES if self.params.reference(role) is None]  # scenes saved before a role
        for role, node in create_prompt_nodes(slicer.mrmlScene, missing).items():
            self.params.set_reference(role, node)
        volume = self.params.reference("volume") or slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.ui.volumeSelector.setCurrentNode(volume)
        self.ui.segmentationSelector.setCurrentNode(self.params.reference("segmentation"))
        self.ui.segmentSelector.setCurrentSegmentID(self.params.get("segmentId"))
        mode = self.params.get("workerMode")
        self.ui.workerSourceComboBox.setCurrentIndex(SOURCES.index(mode) if mode in SOURCES else 0)
        self.onWorkerSourceChanged(self.ui.workerSourceComboBox.currentIndex)
        self.ui.workerUrlLineEdit.text = self.params.get("workerUrl")

    def _set(self, name: str, value: str) -> None:
        if self.params is not None:
            self.params.set(name, value)

    # selections ----------------------------------------------------------------------------------
    def onVolumeChanged(self, node: Any) -> None:
        if self.params is not None:
            self.params.set_reference("volume", node)
        self._startVolume()

    def onSegmentationChanged(self, node: Any) -> None:
        if self.params is not None:
            self.params.set_reference("segmentation", node)
        self.ui.segmentSelector.setCurrentNode(node)
        if node is not None and self.ui.volumeSelector.currentNode() is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.ui.volumeSelector.currentNode())
        self._updateSegment()

    def onSegmentChanged(self, segment_id: str) -> None:
        self._set("segmentId", segment_id or "")
        self._updateSegment()

    def onModelChanged(self, model: str) -> None:
        """Another model: its own session (embeddings are per model) and its own learned artefacts."""
        if not model or model == self.params.get("model") and self.logic.session is not None:
            return
        self._set("model", model)
        self._fillArtefacts()
        self._startVolume()

    def _updateSegment(self) -> None:
        if self.logic.session is not None:
            self.logic.session.set_segment(self.ui.segmentationSelector.currentNode(),
                                           self.ui.segmentSelector.currentSegmentID())

    def _startVolume(self) -> None:
        """New session on the chosen volume (the previous one's task and preview end): upload + precompute in the
        background, the Red slice first."""
        self._resetTaskUi()
        volume = self.ui.volumeSelector.currentNode()
        if volume is None or self.logic.client is None:
            self.logic.end_session()
            return
        session = self.logic.start_session(on_error=self._message, on_notice=self._message)
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        axis, index = slice_of_view(volume, red)
        self._focus = (axis, index)
        session.set_volume(volume, focus=index, axis=axis)
        session.observe({role: self.params.reference(role) for role in PROMPT_ROLES})
        self._watchSliceViewKeys(session)
        self._updateSegment()

    def _watchSliceViewKeys(self, session: Session) -> None:
        """Esc in a slice view leaves Place mode (Slicer's markups widget has no key for it)."""
        layout = slicer.app.layoutManager()
        for name in layout.sliceViewNames():
            session.placement.watch_keys(layout.sliceWidget(name).sliceView().interactor())

    # worker: three ways to get one, none of them waits on the main thread -------------------------------
    def _source(self) -> str:
        return self.ui.workerSourceComboBox.currentData or "slicer"

    def onWorkerSourceChanged(self, index: int) -> None:
        source = self._source()
        self._set("workerMode", source)
        self.ui.pythonPathLineEdit.enabled = source == "python"
        self.ui.installWorkerButton.enabled = source != "remote" or self.install is not None
        self.ui.startWorkerButton.enabled = source != "remote"

    def onStartWorker(self) -> None:
        python = self.ui.pythonPathLineEdit.text.strip()
        set_setting("python", python)
        port = int(qt.QUrl(self.params.get("workerUrl")).port(8765))
        try:
            self.logic.start_local_worker(self._source(), python, port, self.params.get("model") or None)
        except WorkerError as exc:
            self._status("not running")
            slicer.util.errorDisplay(str(exc), windowTitle="SAMMed worker")

    def onStopWorker(self) -> None:
        self.logic.stop_worker()
        self._resetTaskUi()

    def onTestConnection(self) -> None:
        token = self.ui.workerTokenLineEdit.text.strip()
        set_setting("token", token)
        self.logic.connect(self.ui.workerUrlLineEdit.text.strip(), token)

    def onInstallWorker(self) -> None:
        """Install sammed-server for the chosen source in a background process (the button cancels it)."""
        if self.install is not None:
            self.install.cancel()
            return
        source, python = self._source(), self.ui.pythonPathLineEdit.text.strip()
        where = "Slicer's Python" if source == "slicer" else python
        if not slicer.util.confirmOkCancelDisplay(
            f"Install the SAMMed worker (sammed-server and, where missing, PyTorch) into {where}?\n\n"
            "This downloads up to several GB. Slicer stays usable meanwhile; progress shows in the worker status."
        ):
            return
        try:
            self.install = self.logic.install(source, python)
        except WorkerError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SAMMed worker install")
            return
        self.ui.installWorkerButton.text = "Cancel install"

    def _pollInstall(self) -> None:
        if self.install is None:
            return
        progress = self.install.poll()
        for line in progress.log:
            print(line)  # the Python console keeps pip's whole output
        if progress.state == "running":
            self._status(f"installing {progress.label} (step {progress.step}/{progress.steps}): {progress.message}")
            return
        self.install = None
        self.ui.installWorkerButton.text = "Install"
        self.onWorkerSourceChanged(self.ui.workerSourceComboBox.currentIndex)
        if progress.state == "succeeded":
            self._status("worker installed: press Start")
        else:
            self._status(progress.message.splitlines()[0])
            if progress.state == "failed":
                slicer.util.errorDisplay(progress.message, windowTitle="SAMMed worker install")

    def _connected(self, info: WorkerInfo) -> None:
        """The worker answered (or its lists were refreshed): fill models and artefacts, start the session."""
        models = [m.id for m in info.models]
        wanted = self.params.get("model")
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(models)
        if wanted in models:
            combo.setCurrentText(wanted)
        combo.blockSignals(False)
        self._set("model", combo.currentText)
        self._fillArtefacts()
        if self.logic.session is None or self.logic.session.client is not self.logic.client:
            self._startVolume()

    def _workerError(self, message: str) -> None:
        self._message(message)
        self._resetTaskUi()

    # workflows (worker jobs, polled by the timer; results previewed, then applied or discarded) ---------------
    def onTrainPrompt(self) -> None:
        self._runTask(lambda session: session.train_prompt(
            self.ui.trainSlicesSpinBox.value, self.ui.promptTypeComboBox.currentText, self._viewedSlice()[0]))

    def onPromptEncoderChanged(self, index: int) -> None:
        if self.logic.session is not None and index >= 0:
            artefact_id = self.ui.promptEncoderComboBox.itemData(index) or ""
            self.logic.session.use_prompt_encoder(artefact_id or None, self._encoderTypes.get(artefact_id, ""))

    def onPropagate(self, direction: str) -> None:
        self._runTask(lambda session: session.propagate(direction, *self._viewedSlice()))

    def onAutoSegmentSapnet(self) -> None:
        self._runTask(lambda session: session.auto_segment_sapnet(self._viewedSlice()[0]))

    def onAutoSegmentModel(self) -> None:
        artefact_id = self.ui.autoModelComboBox.currentData
        if not artefact_id:
            self._message("no trained H-SAM / MA-SAM model: train one with `sammed-server train hsam|masam`")
            return
        self._runTask(lambda session: session.auto_segment_model(artefact_id))

    def onCancelTask(self) -> None:
        session = self.logic.session
        if session is not None and session.task is not None:
            self.logic.worker.calls.submit("cancel", session.cancel_task)

    def onApplyResult(self) -> None:
        applied = False
        with slicer.util.tryWithErrorDisplay("Could not apply the result", waitCursor=True):
            applied = self.logic.session.apply_pending()
        if applied:
            self._message("applied: Undo (Ctrl+Z) takes it back as a whole")
            self._showPending(False)

    def onDiscardResult(self) -> None:
        self.logic.session.discard_pending()
        self._showPending(False)

    def _runTask(self, start: Any) -> None:
        session = self.logic.session
        if session is None:
            self._message("connect to a worker and choose a volume first")
            return
        try:
            start(session)
        except (RuntimeError, SAMMedClientError) as exc:
            self._message(str(exc))
            return
        self._taskRunning = True
        self.ui.cancelTaskButton.enabled = True
        self.ui.taskProgressBar.value = 0

    def _showTask(self, state: str, fraction: float, message: str, task: Any) -> None:
        self.ui.taskProgressBar.value = int(100 * fraction)
        loss = f" (loss {task.losses[0]:.3f} → {task.losses[-1]:.3f})" if task.losses else ""
        self.ui.taskLabel.text = message + loss
        if state == "running":
            return
        self._taskRunning = False
        self.ui.cancelTaskButton.enabled = False
        if state == "succeeded":
            self.logic.worker.refresh()  # a new learned artefact appears in the lists
            self._showPending(self.logic.session is not None and self.logic.session.pending is not None)
        else:
            self._message(message)

    def _resetTaskUi(self) -> None:
        self._taskRunning = False
        self.ui.cancelTaskButton.enabled = False
        self.ui.taskProgressBar.value = 0
        self._showPending(False)

    def _showPending(self, waiting: bool) -> None:
        self.ui.applyResultButton.enabled = waiting
        self.ui.discardResultButton.enabled = waiting

    def _viewedSlice(self) -> tuple[int, int]:
        """(axis, index) of the volume slice in the Red view."""
        return self.logic.session.slice_of_view(slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())

    def _fillArtefacts(self) -> None:
        """Fill the learned-encoder and automatic-model lists from the worker's last answer (no request here)."""
        info = self.logic.worker.info
        if info is None:
            return
        model = self.ui.modelComboBox.currentText
        encoders = self.ui.promptEncoderComboBox
        selected = encoders.currentData
        encoders.blockSignals(True)
        encoders.clear()
        encoders.addItem("the model's own prompt encoder", "")
        self._encoderTypes = {}
        for item in info.of_kind("prompt_encoders", base_model=model):
            self._encoderTypes[item.id] = item.manifest.get("prompt_type", "point")
            encoders.addItem(item.label, item.id)
        session = self.logic.session
        if session is not None and session.prompt_encoder:
            selected = session.prompt_encoder  # a freshly trained encoder is the one in use
        encoders.setCurrentIndex(max(0, encoders.findData(selected)))
        encoders.blockSignals(False)
        models = self.ui.autoModelComboBox
        models.clear()
        for item in info.of_kind("auto_models"):
            models.addItem(item.label, item.id)
        batch_models = self.ui.batchModelComboBox
        batch_models.clear()
        for item in info.of_kind("auto_models") + info.of_kind("sapnets"):
            batch_models.addItem(item.label, item.id)

    # batch: `sammed-server batch` over a folder in the local worker's environment; the timer follows it ---------
    def onStartBatch(self) -> None:
        model_id = self.ui.batchModelComboBox.currentData
        folder = self.ui.batchInputPathLineEdit.currentPath
        if not model_id or not folder:
            self.ui.batchStatusLabel.text = "choose a trained model (connect to a worker first) and a folder of volumes"
            return
        if self._source() == "remote":
            self.ui.batchStatusLabel.text = "a batch runs on this computer: choose Slicer's Python or another Python"
            return
        run_folder = self.ui.batchRunPathLineEdit.currentPath or os.path.join(folder, "sammed-batch")
        try:
            self.batch = self.logic.start_batch(self._source(), self.ui.pythonPathLineEdit.text, model_id, folder,
                                                run_folder)
        except (WorkerError, OSError) as exc:
            self.ui.batchStatusLabel.text = f"could not start the batch: {exc}"
            return
        self._loadedCases = set()
        self.ui.batchStartButton.enabled = False
        self.ui.batchCancelButton.enabled = True
        self.ui.batchStatusLabel.text = f"running into {run_folder}"

    def onCancelBatch(self) -> None:
        if self.batch is not None:
            self.batch.cancel()

    def _pollBatch(self) -> None:
        """Show the cohort run's progress; load one newly finished case per tick (loading runs on the main thread)."""
        job = self.batch
        if job is None:
            return
        progress = job.progress()
        ended = progress.done + progress.failed
        self.ui.batchProgressBar.value = int(100 * ended / progress.total) if progress.total else 0
        status = f"{progress.done} done, {progress.failed} failed of {progress.total} case(s)"
        failures = job.failures()
        if failures:
            case_id, error = list(failures.items())[-1]
            status += f"; {case_id}: {error}"
        new = [c for c in job.finished_cases() if c.case_id not in self._loadedCases]
        if not self.ui.batchLoadCheckBox.checked:
            new = []
        if new:
            self._loadedCases.add(new[0].case_id)
            self._loadCase(new[0])
        if progress.running or new:
            self.ui.batchStatusLabel.text = status + (" (running)" if progress.running else "")
            return
        self.ui.batchStatusLabel.text = f"{status}; finished (exit code {progress.returncode}, log {job.log})"
        self.ui.batchStartButton.enabled = True
        self.ui.batchCancelButton.enabled = False
        self.batch = None

    @staticmethod
    def _loadCase(case: FinishedCase) -> None:
        """A finished case into the scene: its volume when it is a file (DICOM series: load them from the DICOM
        database) and its segmentation (which carries its own geometry)."""
        if os.path.isfile(case.volume):
            slicer.util.loadVolume(case.volume)
        slicer.util.loadSegmentation(str(case.segmentation))

    # prompts: the place buttons follow the interaction node (Esc / right-click leave place mode) -------------
    def _placeButtons(self) -> dict[str, Any]:
        return {"positivePoints": self.ui.positivePointButton, "negativePoints": self.ui.negativePointButton,
                "box": self.ui.boxButton, "lasso": self.ui.lassoButton, "scribble": self.ui.scribbleButton}

    def _promptNodes(self) -> dict[str, list[Any]]:
        """The markups of each prompt role; boxes include the ROI nodes the session adopted for later boxes."""
        if self.params is None:
            return {}
        nodes = {role: [self.params.reference(role)] for role in PROMPT_ROLES}
        session = self.logic.session if self.logic is not None else None
        if session is not None:
            nodes["box"] = session.placement.box_nodes
        return nodes

    def placePrompt(self, role: str) -> None:
        """Put the slice views in place mode for one of the prompt markups."""
        app = slicer.app.applicationLogic()
        start_placing(app.GetInteractionNode(), app.GetSelectionNode(), self.params.reference(role))
        self.onInteractionModeChanged()  # already in place mode: only the active place node changed

    def stopPlacing(self) -> None:
        app = slicer.app.applicationLogic()
        stop_placing(app.GetInteractionNode(), app.GetSelectionNode(), self._promptNodes())

    def onInteractionModeChanged(self, caller: Any = None, event: Any = None) -> None:
        app = slicer.app.applicationLogic()
        placing = placing_role(app.GetInteractionNode(), app.GetSelectionNode(), self._promptNodes())
        for role, button in self._placeButtons().items():
            button.blockSignals(True)
            button.checked = role == placing
            button.blockSignals(False)

    def onUndo(self) -> None:
        if self.logic.session is not None and not self.logic.session.undo():
            self._message("nothing to undo")

    def onClearPrompts(self) -> None:
        if self.logic.session is not None:
            self.logic.session.clear_prompts()

    def _installShortcuts(self) -> None:
        self._removeShortcuts()
        bindings = {"Ctrl+Z": self.onUndo, **{key: (lambda r=role: self.placePrompt(r)) for key, role in SHORTCUTS.items()}}
        for key, action in bindings.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.activated.connect(action)
            self.shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    # polling: the one timer; nothing in it waits on the network --------------------------------------
    def onPoll(self) -> None:
        """Deliver finished background calls, advance the install, ask (on a thread) for the session's status.
        An error here is shown once, not every 500 ms."""
        try:
            self.logic.worker.poll()
            self._pollInstall()
            self._pollBatch()
            self._requestSessionStatus()
        except Exception as exc:  # noqa: BLE001 - the timer must keep running, and say what went wrong once
            message = f"SAMMed: {type(exc).__name__}: {exc}"
            if message != self._pollError:
                self._pollError = message
                logging.exception("SAMMed poll")
                self._message(message)

    def _requestSessionStatus(self) -> None:
        session = self.logic.session
        if session is None or session.volume_node is None:
            return
        focus = session.slice_of_view(slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())
        new_focus = focus if focus != self._focus else None
        task = session.task if self._taskRunning else None
        if self.logic.worker.monitor(lambda: fetch_session_status(session, new_focus, task), self._showSessionStatus):
            self._focus = focus

    def _showSessionStatus(self, status: SessionStatus) -> None:
        if status.session is not self.logic.session:
            return  # the volume or worker changed meanwhile
        progress = status.progress
        self.ui.precomputeProgressBar.value = int(100 * progress.fraction)
        self.ui.precomputeProgressBar.setFormat(f"{progress.state} %p%")
        task_state = advance_task(status)
        if task_state is not None and self._taskRunning:
            self._showTask(*task_state, status.task)

    def onDrainPredictions(self) -> None:
        """Write finished predictions into the segment (the prediction thread never touches the scene) and show
        what is still running in the status bar."""
        session = self.logic.session if self.logic is not None else None
        if session is None:
            return
        session.drain()
        activity = session.activity()
        if activity or self._predictionStatusShown:
            slicer.util.showStatusMessage(f"SAMMed: {activity}" if activity else "SAMMed: ready", 0 if activity else 2000)
        self._predictionStatusShown = bool(activity)

    def _status(self, text: str) -> None:
        self.ui.workerStatusLabel.text = text

    def _message(self, text: str) -> None:
        self.ui.messageLabel.text = text


class SAMMedSlicerTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test of the Lib on the scene (no worker needed): slice write honours overwrite, undo exact."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_slice_write_and_undo()
        self.test_parameter_node()

    def test_slice_write_and_undo(self) -> None:
        import numpy as np

        from SAMMedSlicerLib.segments import EditSettings, SegmentSlices

        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
        image = vtk.vtkImageData()
        image.SetDimensions(40, 30, 10)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        volume.SetAndObserveImageData(image)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        a = seg.GetSegmentation().AddEmptySegment("a")
        b = seg.GetSegmentation().AddEmptySegment("b")
        slices = SegmentSlices(seg, volume)
        other = np.zeros((30, 40), bool)
        other[0:10, 0:10] = True
        slices.write(b, 2, 4, other)
        mask = np.zeros((30, 40), bool)
        mask[5:20, 5:20] = True
        edit = slices.apply(EditSettings(), a, 2, 4, mask)
        self.assertTrue(np.array_equal(slices.read(a, 2, 4), mask))
        self.assertTrue(np.array_equal(slices.read(b, 2, 4), other & ~mask))
        slices.undo(edit)
        self.assertFalse(slices.read(a, 2, 4).any())
        self.assertTrue(np.array_equal(slices.read(b, 2, 4), other))
        self.delayDisplay("slice write and undo OK")

    def test_parameter_node(self) -> None:
        params = SAMMedSlicerLogic.parameters()
        params.set("model", "litemedsam")
        self.assertIs(SAMMedSlicerLogic.parameters().node, params.node)
        self.delayDisplay("parameter node OK")
