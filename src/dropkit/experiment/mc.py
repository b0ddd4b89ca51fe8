"""MC dropout on the digits: is the predictive entropy higher where the model is wrong, and on
inputs it has never seen (uniform noise images)?"""

from __future__ import annotations

import torch
from torch import nn

from dropkit.mc import mc_predict

__all__ = ["mc_section"]


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def mc_section(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, *, samples: int,
               noise_images: int, seed: int) -> dict:
    """Predictive entropies (nats) of ``samples`` MC-dropout passes on the test images, split
    into correctly and wrongly classified (by the MC mean), and on ``noise_images`` uniform
    noise images of the same shape; the deterministic (eval-mode) entropies alongside."""
    noise = torch.rand((noise_images, *x_test.shape[1:]),
                       generator=torch.Generator().manual_seed(seed)).to(x_test.device)
    model.eval()
    out: dict = {"samples": samples, "noise_images": noise_images}
    groups: dict[str, torch.Tensor] = {}
    for name, x in (("test", x_test), ("noise", noise)):
        pred = mc_predict(model, x, samples, batch_size=1000, seed=seed)
        groups[name] = pred.entropy.cpu()
        groups[name + "_deterministic"] = _entropy(model(x).softmax(-1)).cpu()
        if name == "test":
            correct = (pred.mean.argmax(-1) == y_test).cpu()
            out["mc_accuracy"] = float(correct.float().mean())
    entropies = {
        "correct": groups["test"][correct],
        "misclassified": groups["test"][~correct],
        "noise": groups["noise"],
        "correct_deterministic": groups["test_deterministic"][correct],
        "misclassified_deterministic": groups["test_deterministic"][~correct],
        "noise_deterministic": groups["noise_deterministic"],
    }
    out["count"] = {k: len(v) for k, v in entropies.items() if "_" not in k}
    out["mean_entropy"] = {k: float(v.mean()) if len(v) else float("nan")
                           for k, v in entropies.items()}
    out["entropies"] = {k: [round(float(e), 6) for e in v] for k, v in entropies.items()
                        if "_" not in k}
    return out
