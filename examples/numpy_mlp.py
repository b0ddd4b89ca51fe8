"""The seed article's NumPy two-layer MLP, vanilla vs inverted dropout, written with dropkit.numpy.

The article's code draws masks with ``np.random.binomial``; here every mask comes from dropkit's
Philox engine, so a seed reproduces it (and ``dropkit.functional`` would draw the same mask for a
torch tensor). The point of the article: both formulations keep the expected activation of the
training network equal to the test network's, one by scaling at test time (vanilla), the other by
scaling at training time (inverted). Averaged over many masks, training matches test.

Run: ``python examples/numpy_mlp.py``
"""

from __future__ import annotations

import numpy as np

import dropkit.numpy as dnp

RATE = 0.5  # probability of dropping a unit (the article's `rate`)


def vanilla_train(x, w1, b1, w2, b2, seed):
    layer1 = dnp.dropout(np.maximum(0, w1 @ x + b1), RATE, mode="vanilla", seed=seed)
    return dnp.dropout(np.maximum(0, w2 @ layer1 + b2), RATE, mode="vanilla", seed=seed + 1)


def vanilla_test(x, w1, b1, w2, b2):
    layer1 = dnp.dropout(np.maximum(0, w1 @ x + b1), RATE, training=False, mode="vanilla")
    return dnp.dropout(np.maximum(0, w2 @ layer1 + b2), RATE, training=False, mode="vanilla")


def inverted_train(x, w1, b1, w2, b2, seed):
    layer1 = dnp.dropout(np.maximum(0, w1 @ x + b1), RATE, seed=seed)
    return dnp.dropout(np.maximum(0, w2 @ layer1 + b2), RATE, seed=seed + 1)


def inverted_test(x, w1, b1, w2, b2):  # no rate needed at test time
    return np.maximum(0, w2 @ np.maximum(0, w1 @ x + b1) + b2)


def main(n_masks: int = 4000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1))
    w1, b1 = rng.normal(size=(16, 8)), rng.normal(size=(16, 1))
    w2, b2 = np.abs(rng.normal(size=(4, 16))), np.abs(rng.normal(size=(4, 1)))
    results = {}
    for name, train, test in [("vanilla", vanilla_train, vanilla_test),
                              ("inverted", inverted_train, inverted_test)]:
        mean_train = np.mean([train(x, w1, b1, w2, b2, 2 * s) for s in range(n_masks)], axis=0)
        expected = test(x, w1, b1, w2, b2)
        # The article's argument is about one layer: E[dropout(h)] at training time equals the
        # test-time activation. (Through the second ReLU it holds only approximately.)
        h = np.maximum(0, w1 @ x + b1)
        h_train = np.mean([dnp.dropout(h, RATE, mode=name, seed=s) for s in range(n_masks)], 0)
        h_test = dnp.dropout(h, RATE, training=False, mode=name)
        results[name] = float(np.max(np.abs(h_train - h_test) / np.maximum(h_test, 1e-12)))
        print(f"{name:8s}  output train mean {mean_train.ravel().round(2)}  "
              f"test {expected.ravel().round(2)}  "
              f"hidden layer: max relative gap train-mean vs test {results[name]:.3f}")
    return results


if __name__ == "__main__":
    main()
