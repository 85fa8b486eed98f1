"""Shapes, identity at init and gradient flow of the adapted-encoder blocks, H-SAM and the decoder-only baseline:
on the real LiteMedSAM (TinyViT) backbone and on a tiny randomly initialised SAM ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from sammed_server.adapted.augmentation import RandomRotateScale
from sammed_server.adapted.baseline import build_decoder_only
from sammed_server.adapted.hsam import (
    ClassBalancedMaskAttention, build_hsam, prior_masked_attention, stage1_weight,
)
from sammed_server.adapted.lora import LoRA, add_lora
from sammed_server.training.losses import ce_dice_loss
from sammed_server.adapted.qkv import QVDelta
from sammed_server.adapted.stem import EncoderTrunk, FrozenStem
from sammed_server.engine.backend import SamBackend
from sammed_server.engine.preprocessing import InputTransform
from sammed_server.errors import InputError

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny_vit_backend() -> SamBackend:
    """A SAM ViT backbone small enough to run in milliseconds: 64 px input, 16 px patches, window + global attention."""
    torch.manual_seed(0)
    dim = 32
    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=2, out_chans=dim,
                              window_size=2, global_attn_indexes=(1,), use_rel_pos=True)
    prompt = PromptEncoder(embed_dim=dim, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8)
    decoder = MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64,
                                                                             num_heads=2))
    return SamBackend("tiny-vit", "0" * 64, encoder, prompt, decoder, 64, "imagenet", torch.device("cpu"))


def _grad_check(model, loss: torch.Tensor) -> None:
    """Only the model's trainable parameters require and receive gradients."""
    loss.backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, parameter in model.named_parameters():
        if id(parameter) in trainable:
            assert parameter.grad is not None, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in model.trainable_parameters())


@pytest.mark.parametrize("interleaved", [False, True])
def test_qv_delta_adds_to_q_and_v_only(interleaved: bool) -> None:
    torch.manual_seed(0)
    qkv, dq, dv = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 8)
    wrapped = QVDelta(qkv, dq, dv, num_heads=2, interleaved=interleaved)
    x = torch.randn(3, 5, 8)
    delta = wrapped(x) - qkv(x)
    if interleaved:  # TinyViT: per head [q k v]
        q, k, v = delta.view(3, 5, 2, 12).split(4, -1)
        q, k, v = (t.flatten(-2) for t in (q, k, v))
    else:  # SAM ViT: [q | k | v]
        q, k, v = delta.split(8, -1)
    torch.testing.assert_close(q, dq(x))
    torch.testing.assert_close(v, dv(x))
    assert k.abs().max() == 0
    assert not qkv.weight.requires_grad
    with pytest.raises(ValueError):
        QVDelta(nn.Linear(8, 16), dq, dv, num_heads=2, interleaved=False)


def test_lora_starts_at_zero_and_learns() -> None:
    lora = LoRA(16, 16, rank=4)
    x = torch.randn(2, 16)
    assert lora(x).abs().max() == 0
    lora(x).sum().backward()
    assert lora.up.weight.grad.abs().sum() > 0  # B learns first; A's gradient is 0 while B = 0
    with pytest.raises(ValueError):
        LoRA(16, 16, rank=0)


def test_tinyvit_stem_trunk_and_lora_identity(backend) -> None:
    """On real LiteMedSAM: stem + trunk = the frozen encoder, and with LoRA at init still exactly the same."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        reference = backend.image_encoder(images)
        stems = FrozenStem(backend.image_encoder)(images)
        trunk = EncoderTrunk(backend.image_encoder)
        assert stems.shape == (1, 128 * 128, 128)
        torch.testing.assert_close(trunk(stems), reference)
        parameters = add_lora(trunk, rank=4)
        assert len(parameters) == 4 * 10  # q and v, A and B, in all 10 attention blocks (2 + 6 + 2)
        torch.testing.assert_close(trunk(stems), reference)
        for up in parameters[1::2]:  # every B matrix: the output must change (the residual stream is ~100×
            up.normal_(0, 1.0)       # larger than an attention delta, so the change is small but far above rounding)
        assert (trunk(stems) - reference).abs().max() > 1e-4
    assert all(not p.requires_grad for p in backend.image_encoder.parameters())  # the backend is untouched


def test_hsam_on_tinyvit_shapes_and_gradients(backend) -> None:
    torch.manual_seed(0)
    model = build_hsam(backend, NUM_CLASSES)
    stems = FrozenStem(backend.image_encoder)(torch.randn(1, 3, 256, 256)).unsqueeze(1)
    labels = torch.randint(-1, NUM_CLASSES, (1, 1, 256, 256))
    with torch.no_grad():  # the class heads start at zero, which passes no gradient upstream: move them as a step would
        for mlp in [*model.stage1.hypernetworks, *model.stage2.hypernetworks]:
            mlp.layers[-1].weight.normal_(0, 0.01)
    model.train()
    _grad_check(model, model.training_loss(stems, labels, progress=0.5))
    lora = model._lora
    assert all(p.grad is not None for p in lora) and any(p.grad.abs().sum() > 0 for p in lora)
    model.eval()
    probabilities = model.probabilities(stems)
    assert probabilities.shape == (1, 1, NUM_CLASSES, 256, 256)
    torch.testing.assert_close(probabilities.sum(2), torch.ones(1, 1, 256, 256))


def test_hsam_and_baseline_on_sam_vit(tiny_vit_backend: SamBackend) -> None:
    """SAM ViT backbones: LoRA identity at init, shapes (4E = 16 → 64 px through two extra ×2 steps), gradients."""
    backend = tiny_vit_backend
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    stems = FrozenStem(backend.image_encoder)(images)
    assert stems.shape == (2, 4, 4, 48)
    model = build_hsam(backend, NUM_CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(model.trunk(stems), backend.image_encoder(images))
    labels = torch.randint(-1, NUM_CLASSES, (2, 1, 64, 64))
    model.train()
    _grad_check(model, model.training_loss(stems.unsqueeze(1), labels, progress=0.0))
    model.eval()
    assert model.probabilities(stems.unsqueeze(1)).shape == (2, 1, NUM_CLASSES, 64, 64)
    with pytest.raises(InputError):
        model.probabilities(torch.stack([stems, stems], 1))  # H-SAM takes single slices

    baseline = build_decoder_only(backend, NUM_CLASSES)
    assert baseline.frozen_encoder and baseline.window == 1
    embeddings = backend.image_encoder(images).detach().unsqueeze(1)
    uniform = torch.full((2, 1, NUM_CLASSES, 64, 64), 1 / NUM_CLASSES)
    torch.testing.assert_close(baseline.probabilities(embeddings), uniform)  # zeroed class heads: no saturated start
    baseline.train()
    _grad_check(baseline, baseline.training_loss(embeddings, labels, progress=0.0))
    assert baseline.probabilities(embeddings).shape == (2, 1, NUM_CLASSES, 64, 64)


def test_prior_masked_attention_matches_sam_attention_and_applies_the_mask(tiny_vit_backend: SamBackend) -> None:
    attention = tiny_vit_backend.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 32), torch.randn(2, 16, 32)
    ones = torch.ones(2, attention.num_heads, 3, 16)
    torch.testing.assert_close(prior_masked_attention(attention, q, k, k, ones), attention(q=q, k=k, v=k))
    zeros = torch.zeros_like(ones)  # nothing passes: only the output projection's bias is left
    expected = attention.out_proj.bias.expand(2, 3, -1)
    torch.testing.assert_close(prior_masked_attention(attention, q, k, k, zeros), expected)


def test_class_balanced_attention_starts_as_identity_and_gates() -> None:
    torch.manual_seed(0)
    block = ClassBalancedMaskAttention(dim=32, heads=4)
    pixels = torch.randn(2, 16, 32)
    prior = torch.softmax(torch.randn(2, NUM_CLASSES, 16), 1)
    out, context = block(pixels, prior)
    torch.testing.assert_close(out, pixels)  # zero output projection at init
    assert context.shape == (2, NUM_CLASSES, 32)
    with torch.no_grad():
        block.gate.bias.fill_(-30.0)  # a closed gate lets no class context through
        block.gate.weight.zero_()
    assert block(pixels, prior)[1].abs().max() < 1e-9
    # the gate is trainable and not a constant: its score changes with the class features
    scores = torch.sigmoid(nn.Linear(32, 32)(torch.randn(NUM_CLASSES, 32)))
    assert scores.std() > 0


def test_stage_weight_decays_and_loss_ignores_unlabelled() -> None:
    assert stage1_weight(0.0) == pytest.approx(0.5) and stage1_weight(1.0) == pytest.approx(0.1)
    assert stage1_weight(0.3) > stage1_weight(0.6)
    labels = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float() * 50
    assert ce_dice_loss(perfect, labels) < 0.01
    assert ce_dice_loss(-perfect, labels) > 0.9
    logits = torch.randn(2, NUM_CLASSES, 8, 8, requires_grad=True)
    assert ce_dice_loss(logits, torch.full_like(labels, -1)) == 0
    ignored = labels.clone()
    ignored[1] = -1
    torch.testing.assert_close(ce_dice_loss(logits, ignored), ce_dice_loss(logits[:1], labels[:1]))


def test_window_inference_averages_consistently(tiny_vit_backend: SamBackend, ct_path) -> None:
    """Stride-1 windows (MA-SAM, window 5, per-window min-max, so no stem cache): a slice gets the same
    probabilities whether the whole volume or only that slice is requested, edge slices included; an edge slice is
    the mean over the windows that contain it."""
    from sammed_server.adapted.features import FeatureSource
    from sammed_server.adapted.inference import predict_classes, slice_probabilities
    from sammed_server.adapted.masam import build_masam
    from sammed_server.adapted.preprocessing import MASAM_PREPROCESSING
    from sammed_server.engine.cache import EmbeddingCache
    from sammed_server.engine.volume import load_volume, volume_from_array

    ct = load_volume(ct_path)
    volume = volume_from_array(ct.array[10:16], ct.spacing, ct.origin, ct.direction)
    torch.manual_seed(0)
    model = build_masam(tiny_vit_backend, NUM_CLASSES, rank=2).eval()
    with torch.no_grad():  # a model whose probabilities differ between windows
        for parameter in model.trainable_parameters():
            parameter.normal_(0, 0.3)
    features = FeatureSource(tiny_vit_backend, MASAM_PREPROCESSING, EmbeddingCache(None, 2**26))
    assert MASAM_PREPROCESSING.window_dependent(tiny_vit_backend.normalization)
    whole = slice_probabilities(model, features, volume)
    assert sorted(whole) == list(range(6)) and whole[0].shape == (NUM_CLASSES, 101, 122)
    for k in (0, 3, 5):
        torch.testing.assert_close(slice_probabilities(model, features, volume, slices=[k])[k], whole[k])
    # slice 0 lies in the windows centred on 0, 1 and 2 (clamped: [0 0 0 1 2], [0 0 1 2 3], [0 1 2 3 4])
    windows = [model.probabilities(features.window(volume, 2, w)[None])[0] for w in
               ([0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4])]
    mean = (windows[0][:3].sum(0) + windows[1][:2].sum(0) + windows[2][0]) / 6
    transform = InputTransform.for_slice(101, 122, volume.slice_spacing(2), 64)
    torch.testing.assert_close(whole[0], transform.logits_to_slice(mean))
    classes = predict_classes(model, features, volume)
    np.testing.assert_array_equal(classes[2], whole[2].argmax(0).numpy())


def test_rotate_scale_moves_images_and_labels_together_per_window() -> None:
    """One draw per window, the same for its slices; labels follow the image (nearest, −1 brought in from outside);
    no rotation and no scaling is the identity."""
    size, generator = 64, torch.Generator().manual_seed(0)
    labels = torch.full((2, 3, size, size), -1, dtype=torch.long)
    labels[:, :, :48, :56] = 0  # the image content, padded at the bottom/right
    labels[:, :, 10:30, 20:50] = 1
    labels[:, :, 35:45, 5:15] = 2
    images = (labels.clamp_min(0).float() / 2)[:, :, None].expand(-1, -1, 3, -1, -1).contiguous()
    same_images, same_labels = RandomRotateScale(0.0, (1.0, 1.0))(images, labels, generator)
    torch.testing.assert_close(same_images, images)
    assert torch.equal(same_labels, labels)

    moved_images, moved_labels = RandomRotateScale(20.0, (0.9, 1.1))(images, labels, generator)
    assert moved_images.shape == images.shape and moved_labels.shape == labels.shape
    assert set(moved_labels.unique().tolist()) <= {-1, 0, 1, 2}
    assert not torch.equal(moved_labels, labels)
    for b in range(2):
        for t in range(1, 3):  # every slice of a window moved alike
            assert torch.equal(moved_labels[b, t], moved_labels[b, 0])
    assert not torch.equal(moved_labels[0], moved_labels[1])  # windows draw their own transforms
    organ = moved_labels[:, :, None].expand_as(moved_images) == 1
    inside = moved_images[organ]
    assert (inside - 0.5).abs().lt(0.26).float().mean() > 0.95  # the image's organ stays under its label
    replay = torch.Generator().manual_seed(0)
    RandomRotateScale(0.0, (1.0, 1.0))(images, labels, replay)  # consumes the same draws as the identity call above
    assert torch.equal(RandomRotateScale(20.0, (0.9, 1.1))(images, labels, replay)[1], moved_labels)  # reproducible
