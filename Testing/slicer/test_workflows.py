"""The panel's long workflows on real MRML against the real worker: "Train prompt from 2 slices", "Propagate",
"Auto-segment (SAP-Net)"; results wait in a preview node, are applied as one undo step, and undo is exact."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import vtk

from SAMMedSlicerLib.segments import SegmentSlices
from SAMMedSlicerLib.session import Session
from SAMMedSlicerLib.workflows import PREVIEW_NAME, annotated_slices

from test_session import dice, largest_slice, read_segment, to_ras


def finish(session: Session, timeout: float = 600) -> tuple[set, Any]:
    """Poll the session's task like the panel's timer does; returns the states seen and the outcome."""
    seen, deadline = set(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, fraction, message = session.task.poll()
        seen.add(state)
        assert 0.0 <= fraction <= 1.0
        if state != "running":
            assert state == "succeeded", message
            return seen, session.task.outcome
        time.sleep(0.2)
    session.task.cancel()
    raise AssertionError(f"{session.task.title} did not finish in {timeout} s")


def organ_segment(segmentation: Any, volume: Any, name: str, organ: np.ndarray, slices: list[int]) -> str:
    """A segment holding the reference ``organ`` on the given axial slices only (what an annotator drew)."""
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", name)  # (id, name): the id is generated
    writer = SegmentSlices(segmentation, volume)
    for k in slices:
        writer.write(segment_id, 2, k, organ[k])
    return segment_id


def spread_slices(organ: np.ndarray, count: int) -> list[int]:
    """``count`` axial slices spread inside the organ (not its first/last, where it is tiny)."""
    present = np.flatnonzero(organ.reshape(organ.shape[0], -1).any(axis=1))
    return [int(present[int(round(q * (len(present) - 1)))]) for q in np.linspace(0.25, 0.75, count)]


def test_annotated_slices_picks_evenly():
    mask = np.zeros((10, 4, 4), bool)
    mask[[1, 2, 4, 7, 8], 1, 1] = True
    assert sorted(annotated_slices(mask, 2)) == [1, 2, 4, 7, 8]
    assert sorted(annotated_slices(mask, 2, count=2)) == [1, 8]
    assert sorted(annotated_slices(mask, 1)) == [1]  # along J: only row 1 has foreground


def test_train_prompt_from_two_slices_then_click(mrml, segmentation, session, reference, capsys):
    """Two annotated liver slices → a learned point prompt encoder (loss curve falls); then one "+" click on
    another slice segments the liver there, which the box-only base model refuses to do from a point."""
    liver = reference["liver"]
    trained_on = spread_slices(liver, 2)
    segment_id = organ_segment(segmentation, mrml.volume, "liver", liver, trained_on)
    session.set_segment(segmentation, segment_id)
    before = read_segment(segmentation, segment_id, mrml.volume)

    session.train_prompt(2, "point")
    seen, artefact_id = finish(session)
    assert session.prompt_encoder == artefact_id and "running" in seen
    losses = session.task.losses
    assert len(losses) >= 10 and np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    assert np.array_equal(read_segment(segmentation, segment_id, mrml.volume), before), "training changed the segment"

    k = largest_slice(liver, axis=2)
    assert k not in trained_on
    js, is_ = np.nonzero(liver[k])
    inside = np.argmin((is_ - is_.mean()) ** 2 + (js - js.mean()) ** 2)
    session.prompt_nodes["positivePoints"].AddControlPoint(vtk.vtkVector3d(*to_ras(mrml.volume, (is_[inside], js[inside], k))))
    session.wait()
    after = read_segment(segmentation, segment_id, mrml.volume)
    score = dice(after[k], liver[k])
    with capsys.disabled():
        print(f"\nlearned point encoder (slices {trained_on}, loss {losses[0]:.3f}→{losses[-1]:.3f}): "
              f"one click on slice {k} → liver Dice {score:.3f}")
    assert score >= 0.25  # raw LiteMedSAM from one point: Dice ≈ 0.01 (it was trained with boxes only)
    assert np.array_equal(np.delete(after, k, axis=0), np.delete(before, k, axis=0))
    assert session.undo() and np.array_equal(read_segment(segmentation, segment_id, mrml.volume), before)


def test_propagate_previews_then_applies_as_one_undo_step(mrml, segmentation, session, reference, capsys):
    """The liver accepted on its largest slice is propagated both ways: the result waits in a preview node (the
    user's segment untouched), Apply writes it in one step, Undo restores the segment exactly."""
    liver = reference["liver"]
    k = largest_slice(liver, axis=2)
    segment_id = organ_segment(segmentation, mrml.volume, "liver", liver, [k])
    session.set_segment(segmentation, segment_id)
    before = read_segment(segmentation, segment_id, mrml.volume)

    session.propagate("both", 2, k)
    _, pending = finish(session)
    assert pending is session.pending and pending.slices
    assert mrml.scene.GetFirstNodeByName(PREVIEW_NAME) is not None
    assert np.array_equal(read_segment(segmentation, segment_id, mrml.volume), before), "preview touched the segment"
    assert (2, k) not in pending.slices and all(axis == 2 for axis, _ in pending.slices)

    assert session.apply_pending()
    assert mrml.scene.GetFirstNodeByName(PREVIEW_NAME) is None
    after = read_segment(segmentation, segment_id, mrml.volume)
    score = dice(after, liver)
    with capsys.disabled():
        print(f"\npropagated liver from slice {k}: {len(pending.slices)} slices, volume Dice {score:.3f} "
              f"({pending.description})")
    assert score >= 0.80
    assert session.undo()
    assert np.array_equal(read_segment(segmentation, segment_id, mrml.volume), before), "undo is not exact"


def test_auto_segment_sapnet_then_discard_or_apply(mrml, segmentation, session, reference, capsys):
    """Spleen annotated on 3 slices → "Auto-segment volume (SAP-Net)": train, then segment every slice; Discard
    leaves everything as it was, Apply reaches volume Dice ≥ 0.80 and keeps the annotated slices as drawn."""
    spleen = reference["spleen"]
    drawn = spread_slices(spleen, 3)
    segment_id = organ_segment(segmentation, mrml.volume, "spleen", spleen, drawn)
    session.set_segment(segmentation, segment_id)
    before = read_segment(segmentation, segment_id, mrml.volume)

    session.auto_segment_sapnet()
    _, pending = finish(session)
    session.discard_pending()
    assert mrml.scene.GetFirstNodeByName(PREVIEW_NAME) is None
    assert np.array_equal(read_segment(segmentation, segment_id, mrml.volume), before)

    session.pending = pending
    pending.show(mrml.scene, mrml.volume)
    session.apply_pending()
    after = read_segment(segmentation, segment_id, mrml.volume)
    score = dice(after, spleen)
    with capsys.disabled():
        print(f"\nSAP-Net auto-segmentation of spleen from slices {drawn}: volume Dice {score:.3f}")
    assert score >= 0.80
    assert all(np.array_equal(after[k], spleen[k]) for k in drawn), "annotated slices were changed"
    assert session.undo() and np.array_equal(read_segment(segmentation, segment_id, mrml.volume), before)


def test_cancel_stops_training_and_changes_nothing(mrml, segmentation, session, reference):
    """Cancel during "Train prompt": the job ends cancelled, clicks keep the model's own encoder, no preview."""
    liver = reference["liver"]
    segment_id = organ_segment(segmentation, mrml.volume, "liver", liver, spread_slices(liver, 2))
    session.set_segment(segmentation, segment_id)
    task = session.train_prompt(2, "point")
    task.cancel()
    deadline = time.monotonic() + 120
    while task.poll()[0] == "running":
        assert time.monotonic() < deadline, "cancel did not stop the training"
        time.sleep(0.2)
    assert task.state == "cancelled" and "cancelled" in task.error
    assert session.prompt_encoder is None and session.pending is None
    with pytest.raises(RuntimeError, match="empty on slice 0"):
        session.propagate("up", 2, 0)


def test_auto_segment_with_trained_model_adds_named_segments(mrml, segmentation, session, worker, shared_cache_dir,
                                                             ct_path, ct_labels_path):
    """An H-SAM model (trained by the CLI for 2 steps: this checks the plumbing, not the Dice) → "Auto-segment
    volume": each organ of its label table becomes a new named, coloured segment; an existing segment with the same
    name is not reused (a numbered name is made); one undo removes them all and restores the rest."""
    import os
    import subprocess

    from conftest import REPO

    env = {**os.environ, "SAMMED_HOME": str(shared_cache_dir / "home"), "SAMMED_CACHE_DIR": str(shared_cache_dir)}
    subprocess.run([str(REPO / ".venv" / "bin" / "sammed-server"), "train", "hsam", "--images", str(ct_path),
                    "--labels", str(ct_labels_path), "--classes", "5=liver,1=spleen", "--slices", "15",
                    "--iterations", "2", "--device", "cpu", "--name", "slicer-test"],
                   check=True, env=env, capture_output=True, timeout=900)
    model = next(a for a in worker.artefacts("auto_models") if a.name == "slicer-test")
    assert model.label == "slicer-test (H-SAM: liver, spleen)"  # as the panel lists it
    existing = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    SegmentSlices(segmentation, mrml.volume).write(existing, 2, 3, np.ones(mrml.volume.GetImageData().GetDimensions()[1::-1], bool))
    session.set_segment(segmentation, existing)
    before = read_segment(segmentation, existing, mrml.volume)

    session.auto_segment_model(model.id)
    _, pending = finish(session)
    assert [label["name"] for label in pending.labels] == ["liver", "spleen"]
    assert all(volume.shape == before.shape for volume in pending.volumes)
    session.apply_pending()
    names = {segmentation.GetSegmentation().GetNthSegment(n).GetName(): segmentation.GetSegmentation().GetNthSegmentID(n)
             for n in range(segmentation.GetSegmentation().GetNumberOfSegments())}
    assert set(names) == {"liver", "liver 2", "spleen"}
    assert tuple(segmentation.GetSegmentation().GetSegment(names["spleen"]).GetColor()) == pytest.approx(
        tuple(pending.labels[1]["color"]))
    liver_new = read_segment(segmentation, names["liver 2"], mrml.volume)
    assert np.array_equal(liver_new, pending.volumes[0] & ~before) or np.array_equal(liver_new, pending.volumes[0])
    assert session.undo()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(read_segment(segmentation, existing, mrml.volume), before)
