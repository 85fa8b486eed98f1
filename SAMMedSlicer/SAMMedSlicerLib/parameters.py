"""The module's state saved with the scene: one ``vtkMRMLScriptedModuleNode`` with node references and settings.

Secrets (the API token) and machine settings (the worker's Python) are not scene state: they live in the
application settings, never here.
"""

from __future__ import annotations

from typing import Any, Optional

MODULE_NAME = "SAMMedSlicer"
SEGMENT_EDITOR_TAG = "SegmentEditor"  # the Segment Editor module's own node (Modules/Scripted/SegmentEditor)
NODE_NAME = "SAMMedSlicerParameters"
REFERENCES = ("volume", "segmentation", "positivePoints", "negativePoints", "box", "lasso", "scribble")
DEFAULTS = {
    "segmentId": "",
    "model": "litemedsam",
    "workerMode": "slicer",  # slicer: PythonSlicer runs the worker; python: a Python the user names; remote: workerUrl
    "workerUrl": "http://127.0.0.1:8765",
}


class Parameters:
    """Typed access to the parameter node (references by role, string settings with defaults)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    @classmethod
    def find_or_create(cls, scene: Any) -> "Parameters":
        """The scene's SAMMed parameter node (made, with defaults, when there is none)."""
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = scene.GetNthNodeByClass(n, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == MODULE_NAME:
                return cls(node)
        node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", NODE_NAME)
        node.SetAttribute("ModuleName", MODULE_NAME)
        for name, value in DEFAULTS.items():
            node.SetParameter(name, value)
        return cls(node)

    def get(self, name: str) -> str:
        value = self.node.GetParameter(name)
        return value if value else DEFAULTS.get(name, "")

    def set(self, name: str, value: str) -> None:
        if name not in DEFAULTS:
            raise KeyError(f"unknown SAMMed setting {name!r}")
        self.node.SetParameter(name, str(value))

    def reference(self, role: str) -> Optional[Any]:
        self._check_role(role)
        return self.node.GetNodeReference(role)

    def set_reference(self, role: str, node: Optional[Any]) -> None:
        self._check_role(role)
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    @staticmethod
    def _check_role(role: str) -> None:
        if role not in REFERENCES:
            raise KeyError(f"unknown SAMMed node reference {role!r}")


def segment_editor_node(scene: Any) -> Any:
    """The Segment Editor module's parameter node (singleton tag "SegmentEditor"), made the way that module makes
    it when it does not exist yet: its overwrite / masking settings are the ones the user sees there."""
    node = scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag(SEGMENT_EDITOR_TAG)
        node = scene.AddNode(node)
    return node
