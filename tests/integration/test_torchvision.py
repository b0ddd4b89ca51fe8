"""dropkit.convert on real torchvision models and ops (no weights)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from integration_helpers import check_model, measure_rates
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.ops import DropBlock2d, DropBlock3d, StochasticDepth

import dropkit
from dropkit.convert import torchvision_drop_block_fraction

DEPTH = "torchvision.ops.stochastic_depth.StochasticDepth"
DROPOUT = "torch.nn.Dropout"
MHA = "torch.nn.MultiheadAttention"


def images(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def test_efficientnet_b0():
    model = torchvision.models.efficientnet_b0(weights=None, num_classes=10,
                                               stochastic_depth_prob=0.2, dropout=0.2)
    check_model(model, images(2, 32), lambda: images(8, 32), passes=6, channels_last=True,
                converted_sources={DEPTH: 16, DROPOUT: 1})


def test_convnext_tiny():
    model = torchvision.models.convnext_tiny(weights=None, num_classes=10,
                                             stochastic_depth_prob=0.2)
    check_model(model, images(2, 32), lambda: images(8, 32), passes=4, channels_last=True,
                converted_sources={DEPTH: 18})


def test_swin_t():
    model = torchvision.models.swin_t(weights=None, num_classes=10, dropout=0.1,
                                      attention_dropout=0.1)  # stochastic depth 0.2
    check_model(model, images(2, 64), lambda: images(4, 64), passes=2,
                converted_sources={DEPTH: 12, DROPOUT: 24})


def test_vit_b_16_multihead_attention_uses_dropkits_attention_dropout():
    model = torchvision.models.vit_b_16(weights=None, num_classes=10, image_size=32,
                                        dropout=0.1, attention_dropout=0.1)
    report = check_model(model, images(2, 32), lambda: images(8, 32), passes=2,
                         converted_sources={DROPOUT: 1 + 2 * 12 + 12, MHA: 12})
    assert report.skipped == []
    attn = report.model.encoder.layers[0].self_attention
    assert type(attn) is dropkit.nn.MultiheadAttention and attn.dropout == 0.1


def test_ops_drop_block_and_stochastic_depth():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), DropBlock2d(0.2, 3), nn.ReLU(),
        nn.Unflatten(1, (2, 4)), DropBlock3d(0.1, 3), nn.Flatten(1, 2),
        StochasticDepth(0.3, "row"), StochasticDepth(0.2, "batch"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    report = check_model(model, images(2, 16), lambda: images(64, 16), passes=4,
                         channels_last=False,
                         converted_sources={"torchvision.ops.drop_block.DropBlock2d": 1,
                                            "torchvision.ops.drop_block.DropBlock3d": 1,
                                            DEPTH: 2})
    assert [c.settings["mode"] for c in report.converted[2:]] == ["row", "batch"]
    realised = dropkit.convert(model, copy=True, drop_block_rate="realised",
                               example_input=images(2, 16))
    p2, p3 = (c.settings["p"] for c in realised.converted[:2])
    assert p2 == pytest.approx(torchvision_drop_block_fraction((16, 16), 0.2, 3)) and p2 < 0.2
    assert p3 == pytest.approx(torchvision_drop_block_fraction((4, 16, 16), 0.1, 3)) and p3 < 0.1
    measure_rates(realised.model, lambda: images(64, 16), passes=4)


def test_channels_last_drop_block():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DropBlock2d(0.2, 3))
    new = dropkit.convert(model, copy=True).model.to(memory_format=torch.channels_last)
    measure_rates(new, lambda: images(32, 16).to(memory_format=torch.channels_last), passes=2)


def _feature_extractor_matches(model: nn.Module, x: torch.Tensor) -> None:
    converted = dropkit.convert(model, copy=True).model.eval()
    model.eval()
    train_nodes, eval_nodes = get_graph_node_names(converted)
    assert train_nodes and eval_nodes == get_graph_node_names(model)[1]
    node = eval_nodes[len(eval_nodes) // 2]
    got = create_feature_extractor(converted, return_nodes={node: "f"})(x)["f"]
    want = create_feature_extractor(model, return_nodes={node: "f"})(x)["f"]
    assert torch.equal(got, want)


def test_create_feature_extractor_on_a_converted_convnext():
    model = torchvision.models.convnext_tiny(weights=None, num_classes=10,
                                             stochastic_depth_prob=0.2)
    _feature_extractor_matches(model, images(2, 32))


def test_create_feature_extractor_on_a_converted_efficientnet():
    model = torchvision.models.efficientnet_b0(weights=None, num_classes=10, dropout=0.2,
                                               stochastic_depth_prob=0.2)
    _feature_extractor_matches(model, images(2, 32))
