"""The model a cohort run applies to every case: a stored automatic model (H-SAM, MA-SAM, decoder-only) or a
SAP-Net (SAM-auto, optionally with a learned prompt encoder), resolved once on the driver (:func:`resolve_model`)
and loaded once per Ray worker (:class:`LoadedModel`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..engine.segmentation_file import Segment, default_color
from ..engine.volume import Volume


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to load the model; ``weights_sha256`` identifies the result in the manifest."""

    model_id: str
    kind: str  # "auto_models" or "sapnets"
    base_model: str
    weights_sha256: str
    prompt_encoder: Optional[str] = None
    device: Optional[str] = None
    axis: int = 2
    window: Optional[str] = None

    def fingerprint(self) -> dict[str, str]:
        """The manifest's model entry: id (with the prompt encoder, if any) and weights hash."""
        model_id = self.model_id + (f"+{self.prompt_encoder}" if self.prompt_encoder else "")
        return {"model_id": model_id, "weights_sha256": self.weights_sha256, "base_model": self.base_model}

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_model(model_id: str, prompt_encoder: Optional[str] = None, device: Optional[str] = None,
                  axis: int = 2, window: Optional[str] = None) -> ModelSpec:
    """Find the stored model ``model_id`` (a clear error when there is none) without loading any weights."""
    from ..adapted.store import ARTEFACT_KIND
    from ..artefacts import artefact_kind, read_manifest
    from ..errors import InputError

    kind = artefact_kind(model_id, (ARTEFACT_KIND, "sapnets"))
    manifest = read_manifest(kind, model_id)
    weights = manifest["weights_sha256"]
    if prompt_encoder:
        if kind != "sapnets":
            raise InputError("a learned prompt encoder refines SAP-Net prompts; "
                             f"{model_id} is an automatic model that needs none")
        weights += "+" + read_manifest("prompt_encoders", prompt_encoder)["weights_sha256"]
    return ModelSpec(model_id, kind, manifest["base_model"], weights, prompt_encoder, device, axis, window)


class LoadedModel:
    """The backend, cache and stored model of one :class:`ModelSpec`, loaded once; :meth:`segment` one volume."""

    def __init__(self, spec: ModelSpec) -> None:
        from ..engine.cache import EmbeddingCache
        from ..engine.predictor import SlicePredictor
        from ..engine.registry import load_backend
        from ..settings import embedding_cache_dir, memory_cache_bytes

        self.spec = spec
        backend = load_backend(spec.base_model, None, spec.device)
        self.predictor = SlicePredictor(backend, EmbeddingCache(embedding_cache_dir(), memory_cache_bytes()))
        if spec.kind == "sapnets":
            from ..artefacts import read_manifest
            from ..sammed.learned_prompts import load_prompt_encoder
            from ..sammed.sapnet import load_sapnet

            self.sapnet = load_sapnet(spec.model_id, backend)
            self.encoder = load_prompt_encoder(spec.prompt_encoder, backend) if spec.prompt_encoder else None
            self.prompt = read_manifest("prompt_encoders", spec.prompt_encoder)["prompt_type"] if spec.prompt_encoder else "box"
        else:
            from ..adapted.inference import StoredAutoModel

            self.auto_model = StoredAutoModel(spec.model_id, backend, self.predictor.cache)

    def segment(self, volume: Volume) -> list[Segment]:
        """One named, coloured segment per organ the model knows, on ``volume``'s grid."""
        if self.spec.kind == "sapnets":
            from ..sammed.auto_segment import auto_segment

            prepared = self.predictor.prepare(volume, self.spec.window)
            result = auto_segment(self.predictor, prepared, self.spec.axis, self.sapnet, prompt_encoder=self.encoder,
                                  prompt=self.prompt)
            return [Segment(self.sapnet.name, result.mask, default_color(0))]
        return self.auto_model.segment(volume, self.spec.axis)
