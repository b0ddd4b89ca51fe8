"""dropkit.integrations.transformers: attn_implementation="dropkit" in real transformers models
(small BERT and GPT-2 configs): eval equals "sdpa"/"eager", training uses the module's rate."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import dropkit._attention as attention_module
import dropkit.integrations.transformers as dkt

transformers = pytest.importorskip("transformers")


def _bert(**kw):
    return transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=32, **kw)


def _gpt2(**kw):
    return transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=32, bos_token_id=0, eos_token_id=0, **kw)


CONFIGS = {"bert": (_bert, "attention_probs_dropout_prob", "hidden_dropout_prob", "sdpa"),
           "gpt2": (_gpt2, "attn_pdrop", "resid_pdrop", "eager")}


def _models(kind, rate=0.3):
    make, attn_rate, hidden_rate, reference = CONFIGS[kind]
    config = make(**{attn_rate: rate, hidden_rate: 0.0, "embd_pdrop" if kind == "gpt2"
                     else "classifier_dropout": 0.0})
    name = dkt.register()
    ours = transformers.AutoModel.from_config(copy.deepcopy(config), attn_implementation=name)
    ref = transformers.AutoModel.from_config(copy.deepcopy(config),
                                             attn_implementation=reference)
    ref.load_state_dict(ours.state_dict())
    assert ours.config._attn_implementation == "dropkit"
    return ours, ref


def _batch():
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0  # padding: the mask reaches the attention
    return {"input_ids": ids, "attention_mask": mask}


def test_register_is_idempotent_and_returns_the_name():
    assert dkt.register() == dkt.register() == "dropkit"
    assert transformers.AttentionInterface()["dropkit"] is dkt.attention_forward


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_eval_equals_the_reference_implementation(kind):
    ours, ref = _models(kind)
    batch = _batch()
    with torch.no_grad():
        got = ours.eval()(**batch).last_hidden_state
        expected = ref.eval()(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_training_drops_at_the_modules_rate_reproducibly(kind, monkeypatch):
    ours, ref = _models(kind, rate=0.25)
    rates = []
    real = attention_module.scaled_dot_product_attention

    def spy(*args, **kwargs):
        rates.append(kwargs["dropout_p"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dkt.DF, "scaled_dot_product_attention", spy)
    batch = _batch()
    ours.train()
    torch.manual_seed(5)
    a = ours(**batch).last_hidden_state
    torch.manual_seed(5)
    b = ours(**batch).last_hidden_state
    c = ours(**batch).last_hidden_state
    assert rates == [0.25] * 6  # 2 layers x 3 calls
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with torch.no_grad():
        expected = ref.eval()(**batch).last_hidden_state
    assert not torch.allclose(a, expected, atol=1e-3)  # training really drops
    a.sum().backward()
    attention_params = [p for n, p in ours.named_parameters() if "attn" in n or "attention" in n]
    assert attention_params and all(p.grad is not None for p in attention_params)
    ours.eval()
    rates.clear()
    ours(**batch)
    assert rates == [0.0, 0.0]


def test_register_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="needs transformers"):
        dkt.register()
