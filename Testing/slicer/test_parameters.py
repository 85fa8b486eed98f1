"""The parameter node keeps the module's selections and settings through a saved and reloaded scene."""

from __future__ import annotations

from conftest import make_mrml

from SAMMedSlicerLib.parameters import Parameters
from SAMMedSlicerLib.session import create_prompt_nodes


def test_parameter_node_round_trips_through_a_saved_scene(mrml, segmentation, tmp_path):
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")  # (id, name)
    params = Parameters.find_or_create(mrml.scene)
    prompt_nodes = create_prompt_nodes(mrml.scene)
    params.set_reference("volume", mrml.volume)
    params.set_reference("segmentation", segmentation)
    for role, node in prompt_nodes.items():
        params.set_reference(role, node)
    params.set("segmentId", segment_id)
    params.set("workerMode", "remote")
    params.set("workerUrl", "http://gpu-box:8765")
    assert Parameters.find_or_create(mrml.scene).node is params.node

    for node, name in ((mrml.volume, "ct.nrrd"), (segmentation, "seg.seg.nrrd"),
                       *((n, f"{r}.mrk.json") for r, n in prompt_nodes.items())):
        node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(tmp_path / name))
        assert node.GetStorageNode().WriteData(node) == 1
    mrml.scene.SetURL(str(tmp_path / "scene.mrml"))
    mrml.scene.SetRootDirectory(str(tmp_path))
    assert mrml.scene.Commit() == 1

    reloaded = make_mrml()
    reloaded.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.scene.Import() == 1
    again = Parameters.find_or_create(reloaded.scene)
    assert again.get("segmentId") == segment_id and again.get("model") == "litemedsam"
    assert again.get("workerMode") == "remote" and again.get("workerUrl") == "http://gpu-box:8765"
    assert again.reference("volume").GetName() == "ct"
    assert again.reference("segmentation").GetSegmentation().GetSegment(segment_id).GetName() == "liver"
    assert again.reference("box").GetClassName() == "vtkMRMLMarkupsROINode"
    assert again.reference("lasso").GetClassName() == "vtkMRMLMarkupsClosedCurveNode"
    assert again.reference("positivePoints").GetName() == "SAMMed +"
    assert reloaded.scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1


def test_segment_editor_node_is_the_segment_editor_modules_singleton():
    """The node whose overwrite/masking settings prompts follow is the one the Segment Editor module shows
    (singleton tag "SegmentEditor"), not whichever vtkMRMLSegmentEditorNode comes first."""
    from SAMMedSlicerLib.parameters import segment_editor_node

    scene = make_mrml().scene
    other = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "another module's editor")
    node = segment_editor_node(scene)
    assert node is not other and node.GetSingletonTag() == "SegmentEditor"
    assert segment_editor_node(scene) is node
    assert scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode") is node
