"""dropkit.convert on real transformers models built from small configs (no downloads)."""

from __future__ import annotations

import torch
from integration_helpers import check_model, measure_rates
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import dropkit

DROPOUT = "torch.nn.Dropout"


def tokens(n: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 100, (n, length))}


def bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=3)
    return BertForSequenceClassification(config)


def gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, use_cache=False)
    return GPT2LMHeadModel(config)


def test_bert_attention_dropout_is_reported_not_applied():
    report = check_model(bert(), tokens(), lambda: tokens(16), passes=4,
                         converted_sources={DROPOUT: 1 + 2 * 2 + 1}, skipped_sources={DROPOUT: 2})
    for s in report.skipped:
        assert s.name.endswith("attention.self.dropout") and s.reason.startswith("not applied:")
        assert "BertSelfAttention" in s.reason


def test_gpt2_attention_dropout_is_reported_not_applied():
    report = check_model(gpt2(), tokens(), lambda: tokens(16), passes=4,
                         converted_sources={DROPOUT: 1 + 2 * 2}, skipped_sources={DROPOUT: 2})
    for s in report.skipped:
        assert s.name.endswith("attn.attn_dropout") and "GPT2Attention" in s.reason


def test_bert_layers_that_run_are_all_converted():
    """Every dropout layer that runs in a training forward of the original is converted."""
    model = bert().train()
    ran = set()
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: ran.add(name))
               for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    model(**tokens())
    for h in handles:
        h.remove()
    report = dropkit.convert(model, copy=True)
    assert {c.name for c in report.converted} == ran
    measure_rates(report.model, lambda: tokens(16), passes=2)
