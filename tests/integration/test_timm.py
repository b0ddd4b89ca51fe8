"""dropkit.convert on real timm models (built from their factories, no weights)."""

from __future__ import annotations

import pytest
import timm
import torch
from integration_helpers import check_model, measure_rates

import dropkit
from dropkit.convert import timm_drop_block_fraction

DROP_PATH = "timm.layers.drop.DropPath"
DROP_BLOCK = "timm.layers.drop.DropBlock2d"
DROPOUT = "torch.nn.Dropout"
ATTENTION = "timm.layers.attention.Attention"


def images(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def test_resnet50_drop_rate_drop_block_rate_drop_path_rate():
    model = timm.create_model("resnet50", pretrained=False, num_classes=10, drop_rate=0.2,
                              drop_block_rate=0.1, drop_path_rate=0.1)
    report = check_model(model, images(2, 32), lambda: images(8, 32), passes=6,
                         channels_last=True, converted_sources={DROP_BLOCK: 9, DROP_PATH: 15})
    by_name = {c.name: c for c in report.converted}
    # layer3: block 5, gamma_scale 0.25 (nominal 0.025); layer4: block 3 (nominal 0.1).
    assert by_name["layer3.0.drop_block"].settings["p"] == pytest.approx(0.025)
    assert by_name["layer4.0.drop_block"].settings["p"] == pytest.approx(0.1)


def test_resnet50_drop_block_rate_realised_keeps_timms_rate():
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=10, drop_block_rate=0.1)
    report = dropkit.convert(model, copy=True, drop_block_rate="realised",
                             example_input=images())
    by_name = {c.name: c for c in report.converted}
    # 64x64 images: layer3's map is 4x4, layer4's 2x2.
    l3 = timm_drop_block_fraction((4, 4), 0.1, 5, 0.25)
    l4 = timm_drop_block_fraction((2, 2), 0.1, 3, 1.0)
    assert by_name["layer3.1.drop_block"].settings["p"] == pytest.approx(l3)
    assert by_name["layer4.1.drop_block"].settings["p"] == pytest.approx(l4)
    assert "4x4 map" in by_name["layer3.1.drop_block"].notes[0]
    # What timm's own layers and the converted ones drop at those map sizes, measured on the
    # layers themselves: 4,000 independent samples (timm's default mask is shared by the
    # channels, so a sample is one draw), each within 4 standard errors of the rate.
    originals = dict(model.named_modules())
    converted = dict(report.model.named_modules())
    for name, size, rate in (("layer3.1.drop_block", 4, l3), ("layer4.1.drop_block", 2, l4)):
        for layer in (originals[name], converted[name]):
            torch.manual_seed(1)
            with torch.no_grad():
                out = layer.train()(torch.ones(4000, 8, size, size))
            per_sample = (out == 0).flatten(1).double().mean(1)
            se = per_sample.std().item() / len(per_sample) ** 0.5
            assert abs(per_sample.mean().item() - rate) <= 4 * se + 1e-3, (
                name, type(layer).__name__, per_sample.mean().item(), rate, se)


def test_vit_small_fused_attention_uses_dropkits_attention_dropout():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10,
                              img_size=64, depth=2, drop_rate=0.1, proj_drop_rate=0.1,
                              attn_drop_rate=0.1, drop_path_rate=0.1)
    assert all(b.attn.fused_attn for b in model.blocks)  # timm's default on torch >= 2.0
    # The Attention blocks become dropkit's (their fused kernel is dropkit's attention, at
    # attn_drop's rate), so their attn_drop layers are converted and applied too.
    report = check_model(model, images(), lambda: images(8), passes=4,
                         converted_sources={DROPOUT: 10, DROP_PATH: 2, ATTENTION: 2},
                         compile_backend="inductor")
    assert report.skipped == []
    attn = report.model.blocks[0].attn
    assert type(attn).__name__ == "TimmAttention"
    assert type(attn.attn_drop) is dropkit.nn.Dropout


def test_vit_small_without_fused_attention_converts_the_attention_dropout():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10,
                              img_size=32, depth=1, attn_drop_rate=0.1)
    model.blocks[0].attn.fused_attn = False
    report = dropkit.convert(model, copy=True)
    assert "blocks.0.attn.attn_drop" in [c.name for c in report.converted]
    assert report.skipped == []
    measure_rates(report.model, lambda: images(4, 32), passes=2)


def test_convnext_tiny():
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10,
                              depths=(1, 1, 2, 1), drop_rate=0.1, drop_path_rate=0.2)
    check_model(model, images(), lambda: images(16), passes=20, channels_last=True,
                converted_sources={DROPOUT: 11, DROP_PATH: 4})


def test_efficientnet_b0():
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10,
                              drop_rate=0.2, drop_path_rate=0.2)
    check_model(model, images(2, 32), lambda: images(8, 32), passes=6, channels_last=True,
                converted_sources={DROP_PATH: 15})
