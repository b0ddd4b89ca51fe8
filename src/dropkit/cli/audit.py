"""``dropkit audit``: requested ``p`` against the realized drop fraction, for dropkit and peers.

For every variant and a grid of shapes (and block sizes and rates), the audit runs ``--draws``
calls on an all-ones float32 input, each with its own seed, and reports:

* ``realized``: the fraction of exact zeros in the outputs of all draws together;
* ``expected``: dropkit's exact expected fraction (``p_eff = round(p * 65536) / 65536`` for the
  Bernoulli variants, the calibration's ``f(gamma_eff)`` for DropBlock, ``docs/dropblock.md``);
* ``rel_err``: ``realized / p - 1``;
* ``se``: the standard error of ``realized`` that the tolerance test uses. For dropkit it is
  the exact one under the hypothesis that dropkit draws what it specifies: *binomial* for
  variants whose decisions are independent Bernoulli trials (dropout: one per element; spatial
  dropout: one per channel; drop path: one per sample), ``sqrt(p (1 - p) / decisions)``; *model*
  for DropBlock, whose units are not independent (blocks overlap): the exact variance of one
  plane's dropped fraction (:func:`block_plane_variance`) over the number of independent planes
  (per-channel masks: one per ``(n, c)``; shared masks: one per sample). Peers get the
  *empirical* error;
* ``se_empirical``: the sample standard deviation of the dropped fractions of independent
  groups (``(n, c)`` planes, or samples for drop path, shared masks and every peer, which is
  valid whatever a peer's masks share) over the square root of their count. For dropkit it
  should agree with ``se``; it is not used for dropkit's test because it degenerates on small
  samples (no drop at all gives 0);
* ``mean_err``: ``mean(output) / mean(input) - 1`` over all draws, with each implementation's
  default scaling (dropkit: inverted ``1 / (1 - p_eff)``; DropBlock ``scale="batch"``);
* ``within``: whether ``|realized - p|`` is at most 3% of ``p`` ("3%"), at most 4 ``se``
  ("4 SE"), both, or neither ("no"). A row passes if either holds.

Peers are audited when they are installed (found by :func:`importlib.util.find_spec`, never
installed by the audit): ``torch`` itself (``F.dropout``, ``F.dropout2d``), ``torchvision.ops``
(``drop_block2d``, ``drop_block3d``, ``stochastic_depth``), ``timm`` (``DropBlock2d``,
``drop_path``, from ``timm.layers`` or the older ``timm.models.layers``) and the ``dropblock``
package (``DropBlock2D``, ``DropBlock3D``). Their APIs are adapted at run time from their
signatures; anything that fails (an import, a missing function, a rejected argument) becomes a
row whose ``within`` is ``error`` and whose ``error`` says why, never a crash. Peers draw from
torch's global generator, seeded per draw inside :func:`torch.random.fork_rng` (the caller's
generator state is restored).

Exit code: 0 when every dropkit row is within tolerance, 1 when one is not (peers never change
the exit code), 2 for bad arguments, 1 when ``--out`` cannot be written. With ``--out DIR`` the
rows go to ``DIR/audit.csv`` and ``DIR/audit.json`` and the picture to ``DIR/audit.png`` (one
panel per variant: each row's relative error at its shape, with the ``±3%`` band). If
matplotlib is missing, the CSV and JSON are still written, a one-line note goes to stderr and
the exit code is unchanged: it reports the calibration, not the picture.

matplotlib is imported only when the picture is drawn (Agg canvas, no pyplot).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._args import (
    add_device,
    add_out,
    add_quick,
    add_seed,
    install_hint,
    make_folder,
    parse_int,
    parse_out,
    parse_seed,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "Case", "Panel", "Row", "Series", "add_parser", "audit", "block_plane_variance",
    "figure_data", "format_table", "grid", "peer_cases", "run",
]

DEFAULT_DRAWS = 100
DEFAULT_QUICK_DRAWS = 20
MIN_DRAWS, MAX_DRAWS = 2, 100_000
DEFAULT_SEED = 0
MAX_SEED = 2**64 - 1
REL_TOL = 0.03  # |realized - p| <= 3% of p ...
SIGMAS = 4.0  # ... or <= 4 standard errors
PEER_MODULES = ("torch", "torchvision", "timm", "dropblock")
FILES = ("audit.csv", "audit.json", "audit.png")
VARIANTS = (
    "dropout", "spatial_dropout2d", "drop_path", "drop_block1d", "drop_block2d", "drop_block3d",
)
_INSTALL_HINT = install_hint("gallery")


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Case:
    """One configuration: a variant on an input ``shape`` (channels first) at rate ``p``."""

    variant: str
    shape: tuple[int, ...]
    p: float
    block: tuple[int, ...] | None = None  # DropBlock only
    per_channel: bool = True  # DropBlock only (dropkit's option)

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[2:]


_RATES = (0.05, 0.1, 0.2)


def grid(quick: bool = False) -> list[Case]:
    """The configurations audited, in table order.

    >>> len(grid(quick=True)), len(grid())
    (19, 216)
    """
    cases: list[Case] = []

    def block_cases(variant: str, maps: Sequence[tuple[int, ...]],
                    blocks: Sequence[tuple[int, ...]], rates: Sequence[float],
                    batch: tuple[int, int] = (8, 16)) -> None:
        for spatial in maps:
            for block in blocks:
                for p in rates:
                    for per_channel in (True, False):
                        cases.append(Case(variant, (*batch, *spatial), p, block, per_channel))

    if quick:
        cases += [Case("dropout", (8, 16, 14, 14), 0.1),
                  Case("spatial_dropout2d", (8, 16, 14, 14), 0.1),
                  Case("drop_path", (64, 8, 4, 4), 0.1)]
        block_cases("drop_block1d", [(16,)], [(3,)], [0.1])
        block_cases("drop_block2d", [(7, 7), (14, 14)], [(3, 3), (4, 4), (7, 7)], [0.1])
        block_cases("drop_block3d", [(7, 7, 7)], [(3, 3, 3)], [0.1])
        return cases
    for shape in ((8, 16, 7, 7), (8, 16, 14, 14), (8, 16, 56, 56)):
        cases += [Case("dropout", shape, p) for p in _RATES]
    for shape in ((8, 16, 7, 7), (8, 16, 28, 28)):
        cases += [Case("spatial_dropout2d", shape, p) for p in _RATES]
    cases += [Case("drop_path", (64, 8, 4, 4), p) for p in _RATES]
    block_cases("drop_block1d", [(16,), (50,)], [(3,), (4,), (7,)], (0.1, 0.2))
    block_cases(
        "drop_block2d",
        [(7, 7), (14, 14), (28, 28), (56, 56), (12, 20)],
        [(1, 1), (3, 3), (4, 4), (5, 5), (7, 7)],
        _RATES,
    )
    block_cases("drop_block3d", [(7, 7, 7), (8, 14, 14)], [(3, 3, 3), (4, 4, 4), (2, 5, 5)],
                (0.1, 0.2))
    return cases


# ----------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the audit: an implementation on one configuration (or an error)."""

    variant: str
    provider: str  # "dropkit", "torch", "torchvision", "timm", "dropblock"
    impl: str  # the call that was audited
    masks: str  # what one decision covers: "element", "channel", "sample", "per channel", ...
    shape: list[int] | None
    block: list[int] | None
    p: float | None
    draws: int
    expected: float | None  # dropkit's exact expected fraction; None for peers
    realized: float | None
    rel_err: float | None  # realized / p - 1
    se: float | None  # the standard error used by the tolerance test
    se_kind: str  # "binomial", "model" (dropkit) or "empirical" (peers)
    se_empirical: float | None  # from the spread of independent planes or samples
    units: int | None  # independent decisions or planes behind se
    mean_err: float | None  # mean(output) / mean(input) - 1
    within: str  # "3% and 4 SE", "3%", "4 SE", "no" or "error"
    ok: bool | None  # None for error rows of peers
    error: str = ""


ROW_FIELDS = tuple(f.name for f in fields(Row))


def _within(realized: float, p: float, se: float) -> str:
    diff = abs(realized - p)
    rel, sig = diff <= REL_TOL * p, diff <= SIGMAS * se
    if rel and sig:
        return "3% and 4 SE"
    return "3%" if rel else "4 SE" if sig else "no"


def _error_text(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


# ----------------------------------------------------------------------------- measuring


@dataclass
class _Tally:
    zeros: int = 0
    total: int = 0
    out_sum: float = 0.0
    groups: list[Any] = field(default_factory=list)  # per-group drop fractions, one per draw


def _draw(tally: _Tally, out: torch.Tensor, shape: tuple[int, ...], groups: int) -> None:
    import torch

    if not isinstance(out, torch.Tensor):
        raise TypeError(f"returned {type(out).__name__}, not a tensor")
    if tuple(out.shape) != shape:
        raise ValueError(f"returned shape {tuple(out.shape)}, expected {shape}")
    per_group = (out == 0).reshape(groups, -1).sum(dim=1)
    tally.zeros += int(per_group.sum())
    tally.total += out.numel()
    tally.out_sum += float(out.sum(dtype=torch.float64))
    tally.groups.append(per_group.cpu().double() / (out.numel() // groups))


def _empirical_se(tally: _Tally) -> tuple[float, int]:
    """Sample standard deviation of the independent groups' fractions over sqrt(count)."""
    import torch

    fractions = torch.cat(tally.groups)
    count = fractions.numel()
    return float(fractions.std() / math.sqrt(count)), count


def _finish(row: Row, tally: _Tally, p: float, model: tuple[float, str, int] | None) -> Row:
    """Fill in the measured fields. ``model``: (standard error, kind, units) when the
    variance is known under the hypothesis that the implementation draws what it specifies
    (dropkit); otherwise the empirical standard error is used (peers)."""
    realized = tally.zeros / tally.total
    empirical, groups = _empirical_se(tally)
    se, kind, units = (empirical, "empirical", groups) if model is None else model
    row.realized, row.rel_err = realized, realized / p - 1.0
    row.se, row.se_kind, row.se_empirical, row.units = se, kind, empirical, units
    row.mean_err = tally.out_sum / tally.total - 1.0  # the input is all ones
    row.within = _within(realized, p, se)
    row.ok = row.within != "no"
    return row


def _axis_pairs(length: int, b: int) -> tuple[Any, Any]:
    """Distinct ``(c(u), c(v), c(u, v))`` over all pairs of units ``(u, v)`` of one axis, with
    their counts: ``c`` counts the valid block starts covering a unit (or both units)."""
    import numpy as np

    starts = length - b + 1
    u = np.arange(length)
    lo, hi = np.maximum(u - b + 1, 0), np.minimum(u, starts - 1)
    both = np.maximum(np.minimum.outer(hi, hi) - np.maximum.outer(lo, lo) + 1, 0)
    count = hi - lo + 1
    triples = np.stack([np.repeat(count, length), np.tile(count, length), both.ravel()], axis=1)
    return np.unique(triples, axis=0, return_counts=True)


def block_plane_variance(spatial: Sequence[int], block: Sequence[int], gamma: float) -> float:
    """Exact variance of the dropped fraction of one DropBlock plane (``docs/dropblock.md``):
    every valid start is a seed with probability ``gamma``, independently, so with
    ``a = 1 - gamma``, ``P(keep u and v) = a**(c(u) + c(v) - c(u, v))`` and

    ``Var = mean over pairs (u, v) of a**(c(u) + c(v)) * (a**-c(u, v) - 1)``.

    ``c`` factorises over axes, so the pairs are counted per axis and combined (``block``
    clipped to the map).

    >>> round(block_plane_variance((7, 7), (7, 7), 0.1), 12)  # one start: a Bernoulli plane
    0.09
    >>> round(block_plane_variance((5,), (1,), 0.1) * 5, 12)  # independent units
    0.09
    """
    import numpy as np

    triples, counts = np.ones((1, 3), dtype=np.int64), np.ones(1, dtype=np.int64)
    for length, b in zip(spatial, block, strict=True):
        axis, axis_counts = _axis_pairs(int(length), min(int(b), int(length)))
        triples = (triples[:, None, :] * axis[None, :, :]).reshape(-1, 3)
        counts = np.multiply.outer(counts, axis_counts).reshape(-1)
        triples, inverse = np.unique(triples, axis=0, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1), weights=counts).astype(np.int64)
    log_a = math.log1p(-gamma)
    cu, cv, both = (triples[:, k].astype(np.float64) for k in range(3))
    terms = np.exp((cu + cv) * log_a) * np.expm1(-both * log_a)
    return float(counts @ terms) / float(math.prod(spatial)) ** 2


def _seeds(seed: int, index: int, draws: int) -> list[int]:
    """Distinct seeds for every draw of every row: ``seed + index * draws + r`` mod 2**64."""
    return [(seed + index * draws + r) % (MAX_SEED + 1) for r in range(draws)]


# ----------------------------------------------------------------------------- dropkit


def _dropkit_call(case: Case) -> tuple[str, str, Callable[..., Any]]:
    """(impl text, masks, call(x, seed)) for dropkit's function on ``case``.

    The functions are looked up in :mod:`dropkit.functional` when the row runs."""
    import dropkit.functional as DF

    p = case.p
    if case.variant == "dropout":
        return f"dropout(x, {p})", "element", lambda x, s: DF.dropout(x, p, seed=s)
    if case.variant == "spatial_dropout2d":
        return (f"spatial_dropout2d(x, {p})", "channel",
                lambda x, s: DF.spatial_dropout2d(x, p, seed=s))
    if case.variant == "drop_path":
        return f"drop_path(x, {p})", "sample", lambda x, s: DF.drop_path(x, p, seed=s)
    fn = getattr(DF, case.variant)
    block = case.block[0] if len(set(case.block)) == 1 else case.block
    pc = case.per_channel
    impl = f"{case.variant}(x, {p}, {block}" + ("" if pc else ", per_channel=False") + ")"
    return (impl, "per channel" if pc else "shared",
            lambda x, s: fn(x, p, block, per_channel=pc, seed=s))


def _expected(case: Case) -> float:
    from dropkit import rng

    if case.block is None:
        return rng.effective_p(rng.threshold(case.p))
    from dropkit._drop_block_numpy import calibrate

    return calibrate(case.spatial, case.block, case.p).expected


def _model_se(case: Case, draws: int) -> tuple[float, str, int]:
    """Standard error of the realized fraction if dropkit draws what it specifies:
    binomial for independent decisions, the exact DropBlock plane variance otherwise."""
    n, c = case.shape[:2]
    p = case.p
    if case.block is None:
        per_draw = {"dropout": math.prod(case.shape), "spatial_dropout2d": n * c,
                    "drop_path": n}[case.variant]
        units = per_draw * draws
        return math.sqrt(p * (1.0 - p) / units), "binomial", units
    from dropkit._drop_block_numpy import calibrate

    cal = calibrate(case.spatial, case.block, p)
    planes = (n * c if case.per_channel else n) * draws
    variance = block_plane_variance(case.spatial, cal.block, cal.gamma_eff)
    return math.sqrt(variance / planes), "model", planes


def _groups(case: Case) -> int:
    """Independent groups of one draw: samples (drop path, shared masks) or (n, c) planes."""
    n, c = case.shape[:2]
    shared = case.variant == "drop_path" or (case.block is not None and not case.per_channel)
    return n if shared else n * c


def _audit_dropkit(case: Case, seeds: list[int], device: torch.device) -> Row:
    import torch

    row = Row(case.variant, "dropkit", "", "", list(case.shape),
              None if case.block is None else list(case.block), case.p, len(seeds),
              None, None, None, None, "", None, None, None, "error", False)
    try:
        row.impl, row.masks, call = _dropkit_call(case)
        row.expected = _expected(case)
        model = _model_se(case, len(seeds))
        tally = _Tally()
        for s in seeds:
            x = torch.ones(case.shape, dtype=torch.float32, device=device)
            _draw(tally, call(x, s), case.shape, _groups(case))
        return _finish(row, tally, case.p, model)
    except Exception as err:  # a dropkit failure is a failed row (exit code 1), not a crash
        row.error = _error_text(err)
        return row


# ----------------------------------------------------------------------------- peers


@dataclass
class Peer:
    """A peer implementation: ``make()`` resolves it (imports, signature checks) and returns
    ``call(x, case) -> output``; any exception there is one error row."""

    provider: str
    variant: str
    impl: str
    masks: str
    make: Callable[[], Callable[[Any, Case], Any]]
    applies: Callable[[Case], bool] = lambda case: True


def installed(name: str) -> bool:
    """Whether the top-level module ``name`` can be imported (without importing it)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _attr(module: str, *names: str) -> Any:
    """``getattr(import_module(module), name)`` for the first ``name`` that exists."""
    mod = importlib.import_module(module)
    for name in names:
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"{module} has no {' or '.join(names)}")


def _first_module(*modules: str) -> str:
    errors = []
    for name in modules:
        try:
            importlib.import_module(name)
            return name
        except Exception as err:
            errors.append(f"{name}: {_error_text(err)}")
    raise ImportError("; ".join(errors))


def _params(fn: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _rate_kwarg(params: dict[str, inspect.Parameter], where: str) -> str:
    for name in ("drop_prob", "p", "rate", "prob"):
        if name in params:
            return name
    raise TypeError(f"{where} takes none of drop_prob, p, rate: ({', '.join(params)})")


def _square(case: Case) -> bool:
    return case.block is not None and len(set(case.block)) == 1


def _torch_peers() -> list[Peer]:
    def dropout() -> Callable[[Any, Case], Any]:
        import torch.nn.functional as F

        return lambda x, case: F.dropout(x, case.p, training=True)

    def dropout2d() -> Callable[[Any, Case], Any]:
        import torch.nn.functional as F

        return lambda x, case: F.dropout2d(x, case.p, training=True)

    return [
        Peer("torch", "dropout", "torch.nn.functional.dropout(x, p, training=True)", "element",
             dropout),
        Peer("torch", "spatial_dropout2d", "torch.nn.functional.dropout2d(x, p, training=True)",
             "channel", dropout2d),
    ]


def _torchvision_peers() -> list[Peer]:
    def drop_block(name: str) -> Callable[[], Callable[[Any, Case], Any]]:
        def make() -> Callable[[Any, Case], Any]:
            fn = _attr("torchvision.ops", name)
            params = _params(fn)
            extra = {"training": True} if "training" in params or not params else {}
            return lambda x, case: fn(x, case.p, case.block[0], **extra)

        return make

    def stochastic_depth() -> Callable[[Any, Case], Any]:
        fn = _attr("torchvision.ops", "stochastic_depth")
        params = _params(fn)
        extra = {"training": True} if "training" in params or not params else {}
        return lambda x, case: fn(x, case.p, "row", **extra)

    return [
        Peer("torchvision", "drop_block2d", "torchvision.ops.drop_block2d(x, p, block_size)",
             "per channel", drop_block("drop_block2d"), _square),
        Peer("torchvision", "drop_block3d", "torchvision.ops.drop_block3d(x, p, block_size)",
             "per channel", drop_block("drop_block3d"), _square),
        Peer("torchvision", "drop_path", 'torchvision.ops.stochastic_depth(x, p, "row")',
             "sample", stochastic_depth),
    ]


def _timm_layers() -> str:
    return _first_module("timm.layers", "timm.models.layers")


def _timm_peers() -> list[Peer]:
    def drop_block(**options: Any) -> Callable[[], Callable[[Any, Case], Any]]:
        def make() -> Callable[[Any, Case], Any]:
            cls = _attr(_timm_layers(), "DropBlock2d")
            params = _params(cls)
            rate = _rate_kwarg(params, "timm DropBlock2d")
            if "block_size" not in params:
                raise TypeError("timm DropBlock2d takes no block_size")
            for name in options:
                if name not in params:
                    raise TypeError(f"timm DropBlock2d takes no {name} (older timm)")

            def call(x: Any, case: Case) -> Any:
                module = cls(**{rate: case.p, "block_size": case.block[0], **options})
                return module.train()(x)

            return call

        return make

    def drop_path() -> Callable[[Any, Case], Any]:
        fn = _attr(_timm_layers(), "drop_path")
        params = _params(fn)
        rate = _rate_kwarg(params, "timm drop_path")
        extra = {"training": True} if "training" in params else {}
        return lambda x, case: fn(x, **{rate: case.p}, **extra)

    peers = [Peer("timm", "drop_block2d", "timm DropBlock2d(drop_prob=p, block_size=k)",
                  _timm_default_masks(), drop_block(), _square)]
    if _timm_has_couple_channels():
        peers.append(Peer(
            "timm", "drop_block2d",
            "timm DropBlock2d(drop_prob=p, block_size=k, couple_channels=False)", "per channel",
            drop_block(couple_channels=False), _square,
        ))
    peers.append(Peer("timm", "drop_path", "timm drop_path(x, drop_prob=p, training=True)",
                      "sample", drop_path))
    return peers


def _timm_signature() -> dict[str, inspect.Parameter]:
    try:
        return _params(_attr(_timm_layers(), "DropBlock2d"))
    except Exception:
        return {}


def _timm_has_couple_channels() -> bool:
    return "couple_channels" in _timm_signature()


def _timm_default_masks() -> str:
    """timm >= 1.0.23 shares masks across channels by default (``couple_channels=True``);
    older versions draw one per channel (``batchwise=False``)."""
    params = _timm_signature()
    if "couple_channels" in params:
        return "per channel" if params["couple_channels"].default is False else "shared"
    return "per channel" if params else "unknown"


def _dropblock_peers() -> list[Peer]:
    def module(name: str) -> Callable[[], Callable[[Any, Case], Any]]:
        def make() -> Callable[[Any, Case], Any]:
            cls = _attr("dropblock", name)
            params = _params(cls)
            rate = _rate_kwarg(params, f"dropblock {name}")

            def call(x: Any, case: Case) -> Any:
                return cls(**{rate: case.p, "block_size": case.block[0]}).train()(x)

            return call

        return make

    return [
        Peer("dropblock", "drop_block2d", "dropblock.DropBlock2D(drop_prob=p, block_size=k)",
             "shared", module("DropBlock2D"), _square),
        Peer("dropblock", "drop_block3d", "dropblock.DropBlock3D(drop_prob=p, block_size=k)",
             "shared", module("DropBlock3D"), _square),
    ]


_PEER_BUILDERS: dict[str, Callable[[], list[Peer]]] = {
    "torch": _torch_peers,
    "torchvision": _torchvision_peers,
    "timm": _timm_peers,
    "dropblock": _dropblock_peers,
}


def peer_cases() -> tuple[list[Peer], dict[str, str]]:
    """The installed peers' implementations, and a status per peer package
    (its version, "not installed", or "error: ...")."""
    peers: list[Peer] = []
    status: dict[str, str] = {}
    for name, build in _PEER_BUILDERS.items():
        if not installed(name):
            status[name] = "not installed"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                peers += build()
            status[name] = str(getattr(module, "__version__", "unknown version"))
        except Exception as err:  # a broken install is reported, not fatal
            status[name] = f"error: {_error_text(err)}"
    return peers, status


def _peer_seeded(device: torch.device) -> Any:
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _audit_peer(peer: Peer, call: Callable[[Any, Case], Any], case: Case, seeds: list[int],
                device: torch.device) -> Row:
    import torch

    row = Row(case.variant, peer.provider, peer.impl, peer.masks, list(case.shape),
              None if case.block is None else list(case.block), case.p, len(seeds),
              None, None, None, None, "", None, None, None, "error", None)
    tally = _Tally()
    try:
        with _peer_seeded(device), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in seeds:
                torch.manual_seed(s)
                x = torch.ones(case.shape, dtype=torch.float32, device=device)
                _draw(tally, call(x, case), case.shape, case.shape[0])
        return _finish(row, tally, case.p, None)
    except Exception as err:  # a peer's API may differ: report, never crash
        row.error = _error_text(err)
        return row


def _peer_error_row(peer: Peer, err: BaseException, draws: int) -> Row:
    return Row(peer.variant, peer.provider, peer.impl, peer.masks, None, None, None, draws,
               None, None, None, None, "", None, None, None, "error", None, _error_text(err))


# ----------------------------------------------------------------------------- the audit


def audit(cases: Sequence[Case], draws: int, seed: int, device: torch.device,
          peers: Sequence[Peer] = ()) -> list[Row]:
    """Measure every case for dropkit, then every peer of the same variant.

    Peer rows follow the dropkit rows of their configuration (once per variant, shape, block
    and ``p``: peers have no ``per_channel`` option). A peer that cannot be resolved gives one
    error row, where it would first have run.
    """
    rows: list[Row] = []
    calls: dict[int, Callable[[Any, Case], Any] | None] = {}

    def key(case: Case) -> tuple[Any, ...]:
        return case.variant, case.shape, case.block, case.p

    done: set[tuple[Any, ...]] = set()
    for index, case in enumerate(cases):
        seeds = _seeds(seed, index, draws)
        rows.append(_audit_dropkit(case, seeds, device))
        if key(case) in done or any(key(c) == key(case) for c in cases[index + 1:index + 2]):
            continue  # the next case has the same configuration: peers run after it
        done.add(key(case))
        for i, peer in enumerate(peers):
            if peer.variant != case.variant or not peer.applies(case):
                continue
            if i not in calls:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        calls[i] = peer.make()
                except Exception as err:
                    calls[i] = None
                    rows.append(_peer_error_row(peer, err, draws))
            call = calls[i]
            if call is not None:
                rows.append(_audit_peer(peer, call, case, seeds, device))
    return rows


# ----------------------------------------------------------------------------- output


COLUMNS = (  # (header, alignment)
    ("provider", "<"), ("shape", "<"), ("block", "<"), ("masks", "<"), ("p", ">"),
    ("expected", ">"), ("realized", ">"), ("rel.err", ">"), ("se", ">"), ("se.emp", ">"),
    ("units", ">"),
    ("mean.err", ">"), ("within", "<"),
)


def _dims(values: Sequence[int] | None) -> str:
    return "-" if values is None else "x".join(str(v) for v in values)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cells(row: Row) -> list[str]:
    within = f"error: {row.error}" if row.within == "error" else (
        row.within if row.ok or row.provider != "dropkit" else "no  <-- OUT OF TOLERANCE")
    return [
        row.provider, _dims(row.shape), _dims(row.block), row.masks, _num(row.p, "g"),
        _num(row.expected, ".5f"), _num(row.realized, ".5f"), _num(row.rel_err, "+.2%"),
        _num(row.se, ".5f"), _num(row.se_empirical, ".5f"),
        "-" if row.units is None else str(row.units),
        _num(row.mean_err, "+.1e"), within,
    ]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a text table, one block per variant (in :data:`VARIANTS` order)."""
    names = [name for name, _ in COLUMNS]
    out: list[str] = []
    for variant in VARIANTS:
        mine = [r for r in rows if r.variant == variant]
        if not mine:
            continue
        cells = [_cells(r) for r in mine]
        widths = [max(len(c[i]) for c in [names, *cells]) for i in range(len(names) - 1)]

        def line(values: Sequence[str], widths: list[int] = widths) -> str:
            head = "  ".join(f"{v:{a}{w}}" for v, (_, a), w in
                             zip(values[:-1], COLUMNS[:-1], widths, strict=True))
            return f"{head}  {values[-1]}".rstrip()

        if out:
            out.append("")
        out += [f"== {variant} ==", line(names), line(["-" * w for w in widths] + ["-" * 6])]
        out += [line(c) for c in cells]
    return "\n".join(out)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return value


def _row_dict(row: Row) -> dict[str, Any]:
    return asdict(row)


def _write(path: Path, write: Callable[[Any], None]) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            write(fh)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(f"cannot write {str(path)!r}: {reason}.") from None


def write_csv(path: Path, rows: Sequence[Row]) -> None:
    def write(fh: Any) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in _row_dict(row).items()})

    _write(path, write)


def write_json(path: Path, report: dict[str, Any]) -> None:
    def write(fh: Any) -> None:
        json.dump(report, fh, indent=2)
        fh.write("\n")

    _write(path, write)


_COLORS = {"dropkit": "#2c7fb8", "dropkit shared": "#41ab5d", "torch": "#636363",
           "torchvision": "#e6550d", "timm": "#d62728", "dropblock": "#756bb1"}
_P_MARKERS = ("o", "^", "v", "s", "D", "P")  # one per requested rate, by rank
BAND_LABEL = f"±{REL_TOL:.0%}"


def _label(row: Row) -> str:
    """Legend label: dropkit split by mask sharing, peers by the audited call."""
    if row.provider == "dropkit":
        return "dropkit" + (" (shared masks)" if row.masks == "shared" else "")
    return row.impl


def _color(label: str, provider: str) -> str:
    if provider == "timm" and "couple_channels=False" in label:
        return "#ff9896"
    return _COLORS.get("dropkit shared" if label.endswith("(shared masks)") else provider,
                       "#000000")


def _config(row: Row) -> str:
    """The x-axis category of a row: its shape, and its block size for DropBlock."""
    text = "x".join(map(str, row.shape or []))
    return text if row.block is None else f"{text}\nblock {'x'.join(map(str, row.block))}"


@dataclass
class Series:
    """One implementation's points in one panel: x in category units (the configuration's
    index, spread by rate inside the category), y the relative error in percent, yerr 4 SE in
    percent of ``p``."""

    label: str
    provider: str
    rows: list[Row]
    x: list[float]
    y: list[float]
    yerr: list[float]
    errors: int = 0  # rows of this implementation that did not run


@dataclass
class Panel:
    """One variant: its configurations (x ticks), the rates drawn and one series per
    implementation."""

    variant: str
    configs: list[str]
    rates: list[float]
    series: list[Series]


def figure_data(rows: Sequence[Row]) -> list[Panel]:
    """The picture's data: per variant (in :data:`VARIANTS` order, those with a measured row),
    the relative error ``(realized - p) / p`` in percent of every measured row, placed at its
    configuration (shape, block) and spread inside it by implementation and rate.

    Error rows (nothing measured) are counted in their series' ``errors``."""
    panels = []
    for variant in VARIANTS:
        mine = [r for r in rows if r.variant == variant]
        measured = [r for r in mine if r.realized is not None and r.p is not None]
        if not measured:
            continue
        configs = sorted({_config(r): (r.shape, r.block or []) for r in measured}.items(),
                         key=lambda item: item[1])
        index = {name: k for k, (name, _) in enumerate(configs)}
        rates = sorted({r.p for r in measured})
        by_label: dict[str, list[Row]] = {}
        for r in measured:
            by_label.setdefault(_label(r), []).append(r)
        slots = len(by_label) * len(rates)
        series = []
        for i, (label, rs) in enumerate(by_label.items()):
            slot = [i * len(rates) + rates.index(r.p) for r in rs]
            spread = [0.8 * ((k + 0.5) / slots - 0.5) for k in slot]
            series.append(Series(
                label, rs[0].provider, rs,
                x=[index[_config(r)] + d for r, d in zip(rs, spread, strict=True)],
                y=[100.0 * r.rel_err for r in rs],
                yerr=[100.0 * SIGMAS * r.se / r.p for r in rs],
                errors=sum(1 for r in mine if r.within == "error" and _label(r) == label)))
        panels.append(Panel(variant, [name for name, _ in configs], rates, series))
    return panels


_REL_TICKS = (-1000, -300, -100, -30, -10, -3, 0, 3, 10, 30, 100, 300, 1000)


def draw_figure(rows: Sequence[Row], title: str) -> Any:
    """One panel per variant: the relative error ``(realized - p) / p`` in percent (symlog) of
    every row, at its configuration (shape and block size) on the x axis, spread inside it by
    implementation (colour) and requested ``p`` (marker), with the tolerance band ``±3%``.
    Error bars are 4 SE (:func:`figure_data` holds the numbers)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    panels = figure_data(rows)
    fig = Figure(figsize=(14.0, 3.0 * max(1, len(panels)) + 0.8), layout="constrained")
    axes = fig.subplots(max(1, len(panels)), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=False):
        markers = dict(zip(panel.rates, itertools.cycle(_P_MARKERS), strict=False))
        points = [(x, y, e) for s in panel.series for x, y, e in zip(s.x, s.y, s.yerr, strict=True)]
        reach = max([abs(y) + e for _, y, e in points] + [10.0])
        band = ax.axhspan(-100 * REL_TOL, 100 * REL_TOL, color="#bbbbbb", alpha=0.5,
                          linewidth=0, label=BAND_LABEL)
        ax.axhline(0.0, color="#999999", linewidth=1, linestyle="--")
        handles = [band]
        for s in panel.series:
            color = _color(s.label, s.provider)
            out = sum(1 for r in s.rows if r.within == "no")
            for p in panel.rates:
                at = [k for k, r in enumerate(s.rows) if r.p == p]
                if at:
                    ax.errorbar([s.x[k] for k in at], [s.y[k] for k in at],
                                yerr=[s.yerr[k] for k in at], marker=markers[p], color=color,
                                linestyle="none", markersize=5, elinewidth=0.8, capsize=0,
                                alpha=0.85)
            shown = (f"{s.label} ({len(s.rows)} rows" + (f", {out} out" if out else "")
                     + (f", {s.errors} not run: errors" if s.errors else "") + ")")
            handles.append(Line2D([], [], color=color, marker="s", linestyle="none",
                                  label=shown))
        handles += [Line2D([], [], color="#555555", marker=markers[p], linestyle="none",
                           label=f"p = {p:g}") for p in panel.rates]
        ax.set_xticks(range(len(panel.configs)), panel.configs)
        ax.set_xlim(-0.5, len(panel.configs) - 0.5)
        for k in range(1, len(panel.configs)):
            ax.axvline(k - 0.5, color="#dddddd", linewidth=0.8)
        ax.set_yscale("symlog", linthresh=3.0, linscale=1.0)
        ax.set_ylim(-reach * 1.2, reach * 1.2)
        ax.yaxis.set_major_locator(FixedLocator([t for t in _REL_TICKS if abs(t) <= reach]))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+g}%" if v else "0"))
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=8)
        ax.set_title(f"{panel.variant}: relative error (realized - p) / p, by shape", fontsize=10)
        ax.set_ylabel("relative error (symlog)", fontsize=9)
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    return fig


def _write_png(path: Path, rows: Sequence[Row], title: str) -> str | None:
    """Draw and save the picture; returns a note instead when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as err:
        first = (str(err).splitlines() or ["matplotlib is missing"])[0]
        return (f"dropkit audit: note: {path.name} not written: matplotlib is missing ({first}); "
                f"install it with: {_INSTALL_HINT}")
    fig = draw_figure(rows, title)
    FigureCanvasAgg(fig)
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(f"cannot write {str(path)!r}: {reason}.") from None
    return None


# ----------------------------------------------------------------------------- arguments


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``audit`` on argparse's subparsers object ``sub``."""
    parser = sub.add_parser(
        "audit",
        help="requested p against the realized drop fraction, for dropkit and installed peers",
        description=(
            "For each variant (dropout, spatial_dropout2d, drop_path, drop_block1d/2d/3d) and a "
            "grid of shapes, block sizes and rates, run --draws calls on an all-ones input and "
            "print the requested p, the realized fraction of zeros, its relative error and "
            "standard error, and the mean-preservation error mean(out)/mean(in) - 1. A row is "
            "within tolerance when |realized - p| <= 3% of p or <= 4 standard errors. Installed "
            "peers (torch, torchvision, timm, dropblock) are audited on the same grid; a peer "
            "whose API differs gets an 'error: ...' row."
        ),
        epilog=(
            "Exit status: 0 when every dropkit row is within tolerance, 1 when one is not (or "
            "--out cannot be written), 2 for bad arguments. Peers never change it. Without "
            "matplotlib the CSV and JSON are written, audit.png is skipped with a note on "
            "stderr, and the exit status is unchanged. Examples: dropkit audit --quick; "
            "dropkit audit --draws 500 --seed 7 --out audit"
        ),
    )
    # Values are parsed in run(), so that a bad value is a one-line error (exit code 2).
    add_quick(parser, "a small grid that runs in a few seconds, "
                      f"{DEFAULT_QUICK_DRAWS} draws per row unless --draws is given")
    parser.add_argument("--draws", default=None, metavar="N",
                        help=f"calls per row, each with its own seed, an int in [{MIN_DRAWS}, "
                             f"{MAX_DRAWS}] (default: {DEFAULT_DRAWS}; "
                             f"{DEFAULT_QUICK_DRAWS} with --quick)")
    add_seed(parser, DEFAULT_SEED, "base seed", ": draw r of row i uses seed + i * draws + r")
    add_out(parser, None, "audit.csv, audit.json and audit.png")
    add_device(parser)
    parser.set_defaults(func=run)
    return parser


def _parse_device(value: object) -> torch.device:
    import torch

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`--device` must name a torch device, got {value!r}.")
    try:
        device = torch.device(value.strip())
    except (RuntimeError, ValueError):
        raise ValueError(f"`--device` must name a torch device, got {value!r}.") from None
    try:
        torch.ones(1, device=device)
    except Exception as err:
        raise ValueError(
            f"`--device` {value!r} is not usable here: {_error_text(err)}"
        ) from None
    return device


def environment(peer_status: dict[str, str]) -> dict[str, Any]:
    import numpy
    import torch

    import dropkit

    return {
        "dropkit": dropkit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "backend": dropkit.get_backend(),
        "torch_threads": torch.get_num_threads(),
        "peers": peer_status,
    }


# ----------------------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> int:
    """Run the audit; returns 0 when every dropkit row is within tolerance, else 1.

    Raises:
        ValueError: A bad ``--draws``, ``--seed``, ``--device`` or ``--out`` (exit code 2).
        OSError: The output folder cannot be created or written (exit code 1).
    """
    quick = bool(args.quick)
    draws = (DEFAULT_QUICK_DRAWS if quick else DEFAULT_DRAWS) if args.draws is None else (
        parse_int("--draws", args.draws, MIN_DRAWS, MAX_DRAWS, f"[{MIN_DRAWS}, {MAX_DRAWS}]"))
    seed = parse_seed(args.seed)
    folder = None if args.out is None else parse_out(args.out)
    device = _parse_device(args.device)
    if folder is not None:
        make_folder(folder)
    start = time.perf_counter()
    peers, peer_status = peer_cases()
    cases = grid(quick)
    print(f"dropkit audit: {'quick' if quick else 'default'} grid, {len(cases)} dropkit rows, "
          f"draws={draws}, seed={seed}, device={device}; peers: "
          + ", ".join(f"{k} {v}" for k, v in peer_status.items()), flush=True)
    rows = audit(cases, draws, seed, device, peers)
    seconds = time.perf_counter() - start
    mine = [r for r in rows if r.provider == "dropkit"]
    bad = [r for r in mine if not r.ok]
    theirs = [r for r in rows if r.provider != "dropkit"]
    summary = {
        "dropkit_rows": len(mine),
        "dropkit_out_of_tolerance": len(bad),
        "peer_rows": len(theirs),
        "peer_out_of_tolerance": sum(1 for r in theirs if r.within == "no"),
        "peer_errors": sum(1 for r in theirs if r.within == "error"),
        "seconds": round(seconds, 3),
        "exit_code": 1 if bad else 0,
    }
    print(format_table(rows))
    print()
    print("realized: fraction of exact zeros over all draws; rel.err = realized / p - 1; "
          "se: the standard error used for 'within' (dropkit: binomial for independent "
          "decisions, the exact DropBlock plane variance for DropBlock; peers: se.emp); "
          "se.emp: from the spread of independent planes or samples; units: decisions, planes "
          "or samples behind se; mean.err = mean(out) / mean(in) - 1; within: |realized - p| "
          f"<= {REL_TOL:.0%} of p and/or <= {SIGMAS:g} se.")
    impls = dict.fromkeys(f"{r.provider}: {r.impl}" for r in theirs)
    for text in impls:
        print(f"  {text}")
    verdict = (f"all {len(mine)} dropkit rows within tolerance" if not bad else
               f"{len(bad)} of {len(mine)} dropkit rows OUT of tolerance")
    print(f"dropkit audit: {verdict}; {summary['peer_rows']} peer rows "
          f"({summary['peer_out_of_tolerance']} out of tolerance, {summary['peer_errors']} "
          f"errors); {seconds:.1f} s")
    if folder is not None:
        report = {
            "config": {"quick": quick, "draws": draws, "seed": seed, "device": str(device),
                       "input": "torch.ones(shape, dtype=torch.float32)",
                       "tolerance": {"relative": REL_TOL, "standard_errors": SIGMAS}},
            "environment": environment(peer_status),
            "summary": summary,
            "rows": [_row_dict(r) for r in rows],
        }
        write_csv(folder / "audit.csv", rows)
        write_json(folder / "audit.json", report)
        note = _write_png(folder / "audit.png", rows,
                          f"dropkit audit ({'quick' if quick else 'default'} grid, {draws} draws "
                          f"per row, seed {seed}): relative error of the realized drop "
                          f"fraction; error bars 4 SE; {verdict}")
        written = [n for n in FILES if n != "audit.png" or note is None]
        print(f"dropkit audit: wrote {', '.join(str(folder / n) for n in written)}")
        if note is not None:
            print(note, file=sys.stderr)
    return summary["exit_code"]
