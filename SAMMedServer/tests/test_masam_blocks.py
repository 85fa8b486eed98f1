"""MA-SAM blocks: FacT, 3D adapters, the adapted encoder and the class decoder, on a tiny random SAM ViT and on the
real LiteMedSAM TinyViT."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sammed_server.adapted.adapter3d import Adapter3D
from sammed_server.adapted.fact import FacT
from sammed_server.adapted.masam import WINDOW, build_masam, window_boxes
from sammed_server.adapted.stem import FrozenStem
from sammed_server.errors import InputError



def tiny_vit_backend(seed: int = 0) -> SimpleNamespace:
    """A randomly initialised SAM (ViT encoder, prompt encoder, mask decoder) at 64 px with 32 channels."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=32,
                              window_size=2, global_attn_indexes=(1,), use_rel_pos=True)
    prompt_encoder = PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                   mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64,
                                                                            num_heads=2), iou_head_hidden_dim=32)
    for module in (encoder, prompt_encoder, decoder):
        module.eval().requires_grad_(False)
    return SimpleNamespace(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder,
                           input_size=64, embedding_size=4)


def perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    """A training-like random change of every zero-initialised adapted weight (adapter up-projections, FacT Σ)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("up.weight", "up.bias")) or ".sigma." in name:
                p.add_(torch.randn(p.shape, generator=gen) * std)


def perturb_decoder(model: torch.nn.Module, std: float = 0.05, seed: int = 2) -> None:
    """A training-like change of the decoder's zero-initialised hypernetwork outputs, so that its logits depend on
    the embeddings and prompts (at initialisation every class logit is 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mlp in model.decoder.hypernetworks:
            mlp.layers[-1].weight.add_(torch.randn(mlp.layers[-1].weight.shape, generator=gen) * std)


# --- FacT -------------------------------------------------------------------------------------------------------


def test_fact_starts_at_zero_shares_factors_and_trains_sigma() -> None:
    fact = FacT(dim=16, rank=4, num_layers=3)
    x = torch.randn(2, 7, 16)
    q0, v2 = fact.projection(0, "q"), fact.projection(2, "v")
    assert torch.count_nonzero(q0(x)) == 0 and torch.count_nonzero(v2(x)) == 0
    assert q0.fact.u is v2.fact.u and q0.fact.v is v2.fact.v  # U, V shared by all layers
    (q0(x) * torch.randn(2, 7, 16) + v2(x)).sum().backward()
    assert fact.sigma["q"].grad[0].abs().sum() > 0 and fact.sigma["v"].grad[2].abs().sum() > 0
    assert fact.sigma["q"].grad[1:].abs().sum() == 0  # untouched layers get nothing
    with torch.no_grad():
        fact.sigma["q"][1].copy_(torch.eye(4))
    expected = x @ fact.u @ fact.v
    assert torch.allclose(fact.projection(1, "q")(x), expected, atol=1e-6)
    with pytest.raises(ValueError):
        fact.projection(3, "q")


# --- 3D adapter -------------------------------------------------------------------------------------------------


def test_adapter_is_identity_then_mixes_exactly_the_neighbouring_slices() -> None:
    torch.manual_seed(0)
    adapter = Adapter3D(dim=8, hidden=4, frames=WINDOW)
    x = torch.randn(2 * WINDOW, 3, 3, 8)  # two windows of 5 slices, 3×3 tokens
    assert torch.equal(adapter(x), x)
    perturb(adapter, std=0.5)
    changed = x.clone()
    changed[2] += torch.randn(3, 3, 8)  # slice t = 2 of the first window
    diff = (adapter(changed) - adapter(x)).abs().flatten(1).amax(1)
    assert diff[[1, 2, 3]].min() > 1e-3  # t and t ± 1 change
    assert diff[[0, 4]].max() == 0  # t ± 2 do not (one adapter, kernel 3)
    assert diff[WINDOW:].max() == 0  # the other window is independent
    with pytest.raises(ValueError):
        adapter(torch.randn(7, 3, 3, 8))
    h = torch.randn(2, WINDOW, 9, 4)  # (B, T, P, m)
    reference = F.conv3d(h.permute(0, 3, 1, 2)[..., None], adapter.conv.weight, adapter.conv.bias, padding=(1, 0, 0))
    assert torch.allclose(adapter.slice_conv(h), reference[..., 0].permute(0, 2, 3, 1), atol=1e-5)


# --- the whole model on a tiny random SAM ViT -------------------------------------------------------------------


def test_vit_masam_starts_as_frozen_encoder_and_has_paper_shapes() -> None:
    backend = tiny_vit_backend()
    model = build_masam(backend, num_classes=3, rank=4)
    images = torch.randn(2 * WINDOW, 3, 64, 64)
    stems = FrozenStem(backend.image_encoder)(images)  # SAM ViT stem: patch_embed only
    assert torch.allclose(model.trunk(stems), backend.image_encoder(images), atol=1e-5)
    assert len(model.facts) == 1  # one width → one shared U, V (the paper)
    assert model.facts["32"].sigma["q"].shape == (2, 4, 4)
    probs = model.probabilities(stems.view(2, WINDOW, *stems.shape[1:]))
    assert probs.shape == (2, WINDOW, 3, 64, 64)  # 4×4 embedding → ×4 SAM upscaling → 2 progressive ×2 steps
    assert torch.allclose(probs.sum(2), torch.ones(2, WINDOW, 64, 64), atol=1e-5)
    perturb(model.trunk)
    assert not torch.allclose(model.trunk(stems), backend.image_encoder(images), atol=1e-4)


def test_vit_masam_box_prompts_shapes() -> None:
    backend = tiny_vit_backend()
    model = build_masam(backend, num_classes=2, rank=4)
    perturb_decoder(model)
    stems = FrozenStem(backend.image_encoder)(torch.randn(WINDOW, 3, 64, 64))[None]
    boxes = window_boxes((10.0, 12.0, 40.0, 44.0), first=3, last=20, start=1)
    assert boxes.shape == (WINDOW, 4) and torch.isnan(boxes[:2]).all() and torch.equal(boxes[2], boxes[4])
    with_box = model.probabilities(stems, boxes=boxes[None])
    without = model.probabilities(stems)
    assert with_box.shape == without.shape == (1, WINDOW, 2, 64, 64)
    assert not torch.allclose(with_box[0, 2:], without[0, 2:])  # the box reaches the decoder
    labels = torch.zeros(1, WINDOW, 64, 64, dtype=torch.long)
    loss = model.training_loss(stems, labels, progress=0.0, boxes=boxes[None])
    loss.backward()
    assert torch.isfinite(loss) and model.decoder.class_tokens.grad is not None
    with pytest.raises(InputError):
        model.probabilities(stems, boxes=boxes)  # missing batch axis
    with pytest.raises(InputError):
        model.probabilities(stems[:, :3])  # not a 5-slice window


def test_vit_masam_gradients_reach_only_trainable_parameters() -> None:
    backend = tiny_vit_backend()
    model = build_masam(backend, num_classes=3, rank=4)
    perturb_decoder(model)
    frozen_before = {k: v.clone() for k, v in backend.image_encoder.state_dict().items()}
    stems = FrozenStem(backend.image_encoder)(torch.randn(WINDOW, 3, 64, 64))[None]
    labels = torch.randint(0, 3, (1, WINDOW, 64, 64))
    labels[:, [0, 4]] = -1  # unlabelled slices are ignored
    model.train()
    model.training_loss(stems, labels, progress=0.0).backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in trainable), name
        assert (p.grad is not None) == p.requires_grad, name
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith(("up.weight", "sigma.q")))
    assert all(torch.equal(v, backend.image_encoder.state_dict()[k]) for k, v in frozen_before.items())
    nothing = model.training_loss(stems, torch.full_like(labels, -1), progress=0.0)
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(InputError):
        model.training_loss(stems, labels[..., :32], progress=0.0)


def test_training_loss_decreases_on_a_tiny_synthetic_problem() -> None:
    backend = tiny_vit_backend()
    model = build_masam(backend, num_classes=2, rank=4)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(WINDOW, 3, 64, 64, generator=gen) * 0.1
    labels = torch.zeros(1, WINDOW, 64, 64, dtype=torch.long)
    for t in range(WINDOW):  # a bright square drifting across the slices
        images[t, :, 16 + 2 * t: 40 + 2 * t, 20:44] += 2.0
        labels[0, t, 16 + 2 * t: 40 + 2 * t, 20:44] = 1
    stems = FrozenStem(backend.image_encoder)(images)[None]
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    losses = []
    for step in range(40):
        loss = model.training_loss(stems, labels, progress=step / 40)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses  # ≈ 0.07 of the start over seeds 0-3


def test_build_masam_rejects_bad_arguments() -> None:
    with pytest.raises(InputError):
        build_masam(tiny_vit_backend(), num_classes=1)
    with pytest.raises(InputError):
        build_masam(tiny_vit_backend(), num_classes=3, rank=0)


# --- the real LiteMedSAM TinyViT ----------------------------------------------------------------------------------


def ct_window(ct_path, first: int) -> torch.Tensor:
    """Five adjacent real CT slices (axis 0 of the (K, J, I) array) → ``(5, 3, 256, 256)`` min-max inputs."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path))).astype(np.float32)
    window = torch.from_numpy(np.clip(array[first:first + WINDOW], -200, 250))[:, None]
    window = F.interpolate(window, size=(256, 256), mode="bilinear", align_corners=False)
    low, high = window.amin((1, 2, 3), keepdim=True), window.amax((1, 2, 3), keepdim=True)
    return ((window - low) / (high - low)).expand(-1, 3, -1, -1).contiguous()


def test_tinyvit_masam_identity_gradients_and_shapes(backend, ct_path) -> None:
    encoder = backend.image_encoder
    torch.manual_seed(0)
    model = build_masam(backend, num_classes=5)
    assert sorted(model.facts) == ["128", "160", "320"]  # one shared U, V per TinyViT width
    assert [model.facts[w].sigma["v"].shape[0] for w in ("128", "160", "320")] == [2, 6, 2]
    perturb_decoder(model)  # else every logit is 0 whatever the embedding
    images = ct_window(ct_path, first=12)
    stems = FrozenStem(encoder)(images)
    probs = model.probabilities(stems[None])  # one pass of the adapted trunk
    assert probs.shape == (1, WINDOW, 5, 256, 256)
    assert math.isclose(probs.sum(2).mean().item(), 1.0, rel_tol=1e-5)
    with torch.no_grad():
        frozen = encoder(images)  # the backend's own frozen encoder
        expected = model.decode(frozen[None])
    assert torch.allclose(probs, expected, atol=1e-4)  # adapted encoder == frozen encoder at initialisation
    assert probs.std() > 1e-3  # not the trivially uniform output of an untouched decoder

    labels = torch.full((1, WINDOW, 256, 256), -1, dtype=torch.long)
    labels[0, 2] = 0
    labels[0, 2, 100:160, 60:140] = 3
    model.train()
    model.training_loss(stems[None], labels, progress=0.5).backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) in trainable), name
    adapters = [p for n, p in model.named_parameters() if n.endswith("up.weight")]
    assert len(adapters) == 2 * 10 and all(p.grad.abs().sum() > 0 for p in adapters)  # 10 attention blocks
    assert all(p.grad is None for p in encoder.parameters())  # the backend's encoder is untouched


@pytest.mark.parametrize("which", ["vit", "tinyvit"])
def test_fact_increments_land_on_q_and_v_only(which, request) -> None:
    backend = tiny_vit_backend() if which == "vit" else request.getfixturevalue("backend")
    model = build_masam(backend, num_classes=2, rank=8)
    perturb(model.facts)
    fact = model.facts[sorted(model.facts, key=int)[-1]]
    wrapped = [m for m in model.trunk.modules() if hasattr(m, "q_delta") and m.q_delta.fact is fact][-1]
    layer, heads, width = wrapped.q_delta.layer, wrapped.num_heads, wrapped.in_features
    x = torch.randn(3, width)
    with torch.no_grad():
        change = wrapped(x) - wrapped.qkv(x)
        if which == "vit":  # [q | k | v]
            dq, dk, dv = change.split(width, -1)
        else:  # per head [q_h k_h v_h]
            dq, dk, dv = (part.flatten(-2) for part in change.view(3, heads, -1).split(width // heads, -1))
        assert torch.allclose(dq, fact.delta(x, layer, "q"), atol=1e-6)
        assert torch.allclose(dv, fact.delta(x, layer, "v"), atol=1e-6)
        assert dk.abs().max() == 0 and dq.abs().max() > 0
