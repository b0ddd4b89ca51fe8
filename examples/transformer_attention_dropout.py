"""A small transformer with dropkit's attention dropout.

``dropkit.functional.scaled_dot_product_attention`` has torch's
``torch.nn.functional.scaled_dot_product_attention`` semantics; its ``dropout_p`` drops
attention weights with dropkit's mask engine (reproducible from a seed, the backward pass
regenerates the mask from a 16-byte key). A one-layer encoder with it learns to copy the
maximum of a sequence of digits to every position. In eval mode (``dropout_p=0``) the
attention matches torch's (to float rounding; 0 difference here).

Runs in a few seconds on a CPU: ``python examples/transformer_attention_dropout.py``.
"""

from __future__ import annotations

import torch
from torch import nn

import dropkit.functional as DF
import dropkit.nn as dnn


class SelfAttention(nn.Module):
    """Multi-head self-attention; ``attn_p`` is the attention-dropout rate in training."""

    def __init__(self, dim: int, heads: int, attn_p: float) -> None:
        super().__init__()
        self.heads, self.attn_p = heads, attn_p
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, dim)
        n, length, dim = x.shape
        q, k, v = (t.view(n, length, self.heads, dim // self.heads).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, dim=-1))
        y = DF.scaled_dot_product_attention(q, k, v,
                                            dropout_p=self.attn_p if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, length, dim))


class Encoder(nn.Module):
    def __init__(self, vocab: int = 10, dim: int = 32, heads: int = 4, length: int = 8,
                 attn_p: float = 0.1, p: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.attn, self.norm1 = SelfAttention(dim, heads, attn_p), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm2, self.drop = nn.LayerNorm(dim), dnn.Dropout(p)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, L) -> (N, L, vocab)
        x = self.embed(tokens) + self.pos
        x = x + self.drop(self.attn(self.norm1(x)))
        x = x + self.drop(self.mlp(self.norm2(x)))
        return self.head(x)


def batch(n: int, g: torch.Generator, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 10, (n, length), generator=g)
    return tokens, tokens.max(1, keepdim=True).values.expand(n, length)


def main(steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Train the encoder on the sequence-maximum task; returns the eval token accuracy and the
    largest difference between dropkit's and torch's attention in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Encoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        tokens, target = batch(64, g)
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tokens, target = batch(512, g)
    with torch.no_grad():
        acc = float((model(tokens).argmax(-1) == target).float().mean())
        q, k, v = torch.randn(3, 2, 4, 8, 8).unbind(0)
        diff = float((DF.scaled_dot_product_attention(q, k, v)
                      - nn.functional.scaled_dot_product_attention(q, k, v)).abs().max())
    print(f"token accuracy (max of 8 digits): {100 * acc:.1f}%; eval attention vs torch's: "
          f"max |difference| {diff:.1e}")
    return {"accuracy": acc, "max_abs_diff_vs_torch": diff}


if __name__ == "__main__":
    torch.set_num_threads(1)  # a tiny model: more threads only contend (tests/test_examples.py)
    main()
