"""The GPU path of the torch runtime: batch size from free memory, pinned transfers, a compiled decoder.

Only used when the backend's device is CUDA; the pure arithmetic (:func:`batch_size_for`) is tested on the CPU,
the rest by the ``gpu`` tests.
"""

from __future__ import annotations

import os

import torch
from torch import nn

MAX_BATCH = 64
MEMORY_SHARE = 0.5  # of the free memory: leaves room for decodes, training and other processes


def batch_size_for(free_bytes: int, per_slice_bytes: int, limit: int = MAX_BATCH, share: float = MEMORY_SHARE) -> int:
    """Slices per encoder batch: ``share`` of the free memory over the measured cost of one slice, in [1, limit]."""
    if per_slice_bytes <= 0:
        return limit
    return int(max(1, min(limit, share * free_bytes // per_slice_bytes)))


def precompute_batch_size(backend, example: torch.Tensor) -> int:
    """Measure one slice's peak memory through ``backend.encode`` (bf16 autocast) and size batches from the free
    memory now. ``example``: one ``(1, 3, S, S)`` model input."""
    device = backend.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    backend.encode(example)
    per_slice = torch.cuda.max_memory_allocated(device) - before
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for(free, per_slice)


def to_device_pinned(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → GPU through page-locked memory, asynchronously."""
    return images.pin_memory().to(device, torch.float32, non_blocking=True)


def to_host_pinned(embeddings: torch.Tensor) -> torch.Tensor:
    """GPU → page-locked host fp16 (the cache's format), waiting for the copy to land."""
    host = torch.empty(embeddings.shape, dtype=torch.float16, pin_memory=True)
    host.copy_(embeddings, non_blocking=True)
    torch.cuda.current_stream(embeddings.device).synchronize()
    return host


def compiled_decoder(mask_decoder: nn.Module):
    """``mask_decoder.predict_masks`` compiled with CUDA graphs (``$SAMMED_COMPILE_DECODER=1``), else as is.
    Each new prompt shape (prompt count, tokens) compiles once: the first click of each kind waits for it."""
    if os.environ.get("SAMMED_COMPILE_DECODER") != "1":
        return mask_decoder.predict_masks
    return torch.compile(mask_decoder.predict_masks, mode="reduce-overhead", dynamic=False)
