"""Stored artefacts (learned prompt encoders, SAP-Nets, adapted models): weights + a JSON manifest.

Each artefact is a folder ``<root>/<kind>/<id>/`` holding ``weights.pt`` and ``manifest.json`` (kind, name,
base model id and weights hash, preprocessing, training record, and the sha256 of ``weights.pt``).
Loading checks that the weights hash matches the manifest and that the base model is the one in use.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .engine.checkpoints import sha256_file
from .errors import CheckpointError, SAMMedError
from .settings import home_dir


class UnknownArtefactError(SAMMedError):
    code = "unknown_artefact"


def artefacts_dir() -> Path:
    return home_dir() / "artefacts"


def save_artefact(kind: str, name: str, state: dict[str, torch.Tensor], manifest: dict[str, Any],
                  root: Optional[Path] = None) -> str:
    """Store ``state`` under a new id (``<name-slug>-<weights hash>``) and return the id."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or kind
    artefact_id = f"{slug}-{digest[:10]}"
    folder = (root or artefacts_dir()) / kind / artefact_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.pt").write_bytes(buffer.getvalue())
    record = {**manifest, "id": artefact_id, "kind": kind, "name": name, "weights_sha256": digest,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (folder / "manifest.json").write_text(json.dumps(record, indent=2))
    return artefact_id


def read_manifest(kind: str, artefact_id: str, root: Optional[Path] = None) -> dict[str, Any]:
    path = (root or artefacts_dir()) / kind / artefact_id / "manifest.json"
    if not path.is_file():
        raise UnknownArtefactError(f"no {kind.replace('_', ' ')} named {artefact_id!r}",
                                   f"look in {path.parent.parent}")
    return json.loads(path.read_text())


def load_artefact(kind: str, artefact_id: str, base_weights_sha256: str,
                  root: Optional[Path] = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified weights and manifest of an artefact trained on the base model with ``base_weights_sha256``."""
    manifest = read_manifest(kind, artefact_id, root)
    weights = (root or artefacts_dir()) / kind / artefact_id / "weights.pt"
    if sha256_file(weights) != manifest["weights_sha256"]:
        raise CheckpointError(f"{artefact_id}: weights.pt does not match its manifest (corrupt file)")
    if manifest.get("base_weights_sha256") != base_weights_sha256:
        raise CheckpointError(
            f"{artefact_id} was trained on {manifest.get('base_model')} weights {str(manifest.get('base_weights_sha256'))[:12]}…,"
            f" not on the model in use",
            "select the model it was trained with, or train it again",
        )
    return torch.load(weights, map_location="cpu", weights_only=True), manifest



def list_artefacts(kind: str, root: Optional[Path] = None) -> list[dict[str, Any]]:
    """Manifests of every stored artefact of ``kind``, newest first (unreadable folders are skipped)."""
    folder = (root or artefacts_dir()) / kind
    manifests = []
    for path in folder.glob("*/manifest.json") if folder.is_dir() else ():
        try:
            manifests.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(manifests, key=lambda m: m.get("created", ""), reverse=True)


def artefact_kind(artefact_id: str, kinds: tuple[str, ...], root: Optional[Path] = None) -> str:
    """Which of ``kinds`` holds an artefact named ``artefact_id`` (for commands that take any model id)."""
    for kind in kinds:
        if ((root or artefacts_dir()) / kind / artefact_id / "manifest.json").is_file():
            return kind
    raise UnknownArtefactError(f"no stored model named {artefact_id!r} (looked in {', '.join(kinds)})",
                               f"look in {root or artefacts_dir()}")
