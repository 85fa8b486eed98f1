"""Place mode, in one place: entering and leaving it, and which markup (or prompt role) is being placed.

Slicer leaves place mode on its own (right-click, the toolbar; Esc through :class:`.placement.PromptPlacement`): the
panel observes the interaction node's ``InteractionModeChangedEvent`` and asks :func:`placing_role` which button, if
any, stays checked; the placement observers ask :func:`is_being_placed` whether a box is still being drawn.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence


def start_placing(interaction_node: Any, selection_node: Any, markup_node: Any) -> None:
    """Put the views in persistent place mode for ``markup_node`` (each click adds a point or draws a box)."""
    selection_node.SetReferenceActivePlaceNodeClassName(markup_node.GetClassName())
    selection_node.SetActivePlaceNodeID(markup_node.GetID())
    interaction_node.SetPlaceModePersistence(1)
    interaction_node.SetCurrentInteractionMode(interaction_node.Place)


def stop_placing(interaction_node: Any, selection_node: Any, markup_nodes: Mapping[str, Sequence[Any]]) -> None:
    """Leave place mode and persistence if one of ``markup_nodes`` is being placed (another module's placing stays)."""
    if placing_role(interaction_node, selection_node, markup_nodes) is None:
        return
    interaction_node.SetPlaceModePersistence(0)
    leave_place_mode(interaction_node)


def leave_place_mode(interaction_node: Optional[Any]) -> None:
    """Back to view transform if the views are in place mode (what right-click does in a slice view)."""
    if interaction_node is not None and interaction_node.GetCurrentInteractionMode() == interaction_node.Place:
        interaction_node.SetCurrentInteractionMode(interaction_node.ViewTransform)


def is_being_placed(interaction_node: Optional[Any], selection_node: Optional[Any], node: Any) -> bool:
    """Whether ``node`` is being placed right now (place mode with it as the active place node)."""
    return placing_role(interaction_node, selection_node, {"": [node]}) is not None


def placing_role(
    interaction_node: Any, selection_node: Any, markup_nodes: Mapping[str, Sequence[Any]]
) -> Optional[str]:
    """The role (``positivePoints``, ``negativePoints``, ``box``) one of whose markups is being placed now, else None.

    A role has several nodes when Slicer made a new ROI for each further box (``PromptPlacement.box_nodes``)."""
    if interaction_node is None or selection_node is None:
        return None
    if interaction_node.GetCurrentInteractionMode() != interaction_node.Place:
        return None
    active = selection_node.GetActivePlaceNodeID()
    return next((role for role, nodes in markup_nodes.items()
                 if any(node is not None and node.GetID() == active for node in nodes)), None)
