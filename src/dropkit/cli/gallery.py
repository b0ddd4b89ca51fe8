"""``dropkit gallery``: PNG pictures of what each dropout variant drops.

The pictures are the figures of the seed articles, drawn from dropkit's own masks:

* ``seeds_1x7x5.png``: the seeds' tensor ``torch.arange(35.).reshape(1, 7, 5)`` (samples,
  timesteps, channels) as a 7x5 grid of numbers, through plain dropout, ``noise_shape=(1, 1, 5)``
  (SpatialDropout1D channels_last: whole columns), ``noise_shape=(1, 7, 1)`` (TimestepDropout:
  whole rows), vanilla mode, Gaussian dropout and alpha dropout.
* ``image_like.png``: an RGB-like ``(1, 3, 32, 32)`` tensor, one row per channel, through plain
  dropout (single pixels) and ``spatial_dropout2d`` (whole channels).
* ``masks.png``: keep masks of dropout, spatial dropout 1d/2d in both data formats and timestep
  dropout, each titled with ``p`` and the realized keep fraction.
* ``volume.png``: depth slices of a ``(1, 4, 4, 16, 16)`` volume through ``spatial_dropout3d``.

Every panel is titled with the call that produced it. All calls use the same ``--seed``, so the
pictures are reproducible (and masks with the same noise-shape size share their decisions: the
mask is a pure function of seed and noise shape). Marked cells come from the keep mask, which is
the same call applied to a tensor of ones (``!= 0``), never from guessing at zeros in the output.

* ``structured.png``: DropBlock keep masks (per channel and shared, two block sizes) and DropPath.

matplotlib is imported only inside :func:`run` (``pip install -e ".[gallery]"`` in the dropkit
repository clone), with the non-interactive Agg canvas and without pyplot, so ``import dropkit``
never imports it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from ._args import (
    add_out,
    add_p,
    add_seed,
    install_hint,
    make_folder,
    parse_int,
    parse_out,
    parse_p,
    parse_seed,
)

__all__ = ["add_parser", "run"]

DEFAULT_OUT = "gallery"
DEFAULT_P = 0.5
DEFAULT_SEED = 0
DEFAULT_DPI = 100
MIN_DPI, MAX_DPI = 20, 600
MAX_SEED = 2**64 - 1

_INSTALL_HINT = install_hint("gallery")
_DROPPED_FACE = "#d9d9d9"
_DROPPED_EDGE = "#7f7f7f"
_KEPT_MASK = "#2c7fb8"
_MONO = {"fontfamily": "monospace"}


# ----------------------------------------------------------------------------- arguments


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``gallery`` on argparse's subparsers object ``sub``."""
    parser = sub.add_parser(
        "gallery",
        help="PNG pictures of what each dropout variant drops",
        description=(
            f"Write {len(PICTURES)} PNG pictures of what each variant drops: "
            + "; ".join(f"{what} ({name})" for name, _, what in PICTURES)
            + f". Needs matplotlib: {_INSTALL_HINT}."
        ),
        epilog=(
            "Example: dropkit gallery --out pictures --p 0.3 --seed 1. Exit status: 0 when the "
            "pictures are written, 1 when matplotlib is missing or --out cannot be written, 2 "
            "for bad arguments."
        ),
    )
    # Values are parsed in run(), so that a bad value is a one-line error (exit code 2)
    # instead of argparse's usage dump.
    add_out(parser, DEFAULT_OUT, "the PNG files")
    add_p(parser, DEFAULT_P, "drop probability used in every panel")
    add_seed(parser, DEFAULT_SEED)
    parser.add_argument(
        "--dpi", default=str(DEFAULT_DPI), metavar="N",
        help=f"resolution of the PNG files, an int in [{MIN_DPI}, {MAX_DPI}] "
        f"(default: {DEFAULT_DPI})",
    )
    parser.set_defaults(func=run)
    return parser


# ----------------------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> int:
    """Write the pictures; returns 0, or 1 when matplotlib is missing.

    Raises:
        ValueError: A bad ``--p``, ``--seed``, ``--dpi`` or ``--out`` (exit code 2).
        OSError: The output folder cannot be created or written (exit code 1).
    """
    p = parse_p(args.p)
    seed = parse_seed(args.seed)
    dpi = parse_int("--dpi", args.dpi, MIN_DPI, MAX_DPI, f"[{MIN_DPI}, {MAX_DPI}]")
    folder = parse_out(args.out)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as err:
        first = (str(err).splitlines() or ["matplotlib is missing"])[0]
        print(
            f"dropkit gallery: error: the gallery needs matplotlib ({first}); install it with: "
            f"{_INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    make_folder(folder)
    for name, draw, _ in PICTURES:
        fig = draw(p, seed)
        FigureCanvasAgg(fig)
        path = folder / name
        try:
            fig.savefig(path, dpi=dpi)
        except OSError as err:
            reason = err.strerror or str(err)
            raise OSError(f"cannot write {str(path)!r}: {reason}.") from None
        print(path)
    print(
        f"dropkit gallery: wrote {len(PICTURES)} pictures to {folder} "
        f"(p={p!r}, seed={seed}, dpi={dpi})"
    )
    return 0


# ----------------------------------------------------------------------------- helpers


def _fmt(value: float) -> str:
    return repr(float(value))


def _keep(fn: Callable[..., Any], shape: tuple[int, ...], p: float, **kwargs: Any) -> Any:
    """The keep mask of ``fn(x, p, **kwargs)`` for any ``x`` of ``shape``, as a numpy bool array:
    the mask is a pure function of (seed, noise shape), so ``fn(ones) != 0`` is exactly it."""
    import torch

    return (fn(torch.ones(shape, dtype=torch.float64), p, **kwargs) != 0).numpy()


def _drops_all(p: float) -> bool:
    """``p`` rounds to ``p_eff == 1``: everything is dropped, there is no inverted scale."""
    from dropkit import rng

    return rng.threshold(p) == rng.LANE_RANGE


def _scale(p: float) -> float:
    from dropkit import rng

    return 1.0 if _drops_all(p) else rng.inverted_scale(rng.threshold(p))


def _p_text(p: float) -> str:
    """``p = 0.5``, plus the realized ``p_eff`` when rounding to 1/65536 changed it."""
    from dropkit import rng

    p_eff = rng.effective_p(rng.threshold(p))
    return f"p = {_fmt(p)}" + ("" if p_eff == p else f" (p_eff = {p_eff:.6g})")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _wrap_call(call: str, width: int) -> str:
    """Break a long call (e.g. with a 20-digit seed) after top-level commas, so titles of
    neighbouring panels do not collide."""
    cuts, depth = [], 0
    for i, char in enumerate(call):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 1:
            cuts.append(i + 1)
    lines, start = [], 0
    while len(call) - start > width:
        fits = [c for c in cuts if start < c <= start + width]
        if not fits:
            break
        lines.append(call[start:fits[-1]])
        start = fits[-1] + 1  # skip the space after the comma
    lines.append(call[start:])
    return "\n    ".join(lines)


def _luminance(rgba: tuple[float, ...]) -> float:
    return 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]


# ----------------------------------------------------------------------------- seeds 1x7x5


def _value_grid(ax: Any, values: Any, keep: Any, title: str, caption: str) -> None:
    """A grid of numbers: kept cells coloured by value, dropped cells grey and hatched."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    rows, cols = values.shape
    cmap = matplotlib.colormaps["YlGnBu"].with_extremes(bad=_DROPPED_FACE)
    kept = values[keep]
    low, high = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 1.0)
    norm = Normalize(low, high if high > low else low + 1.0)
    ax.imshow(np.ma.masked_array(values, mask=~keep), cmap=cmap, norm=norm)
    integral = bool(np.all(values == np.round(values)))
    for (r, c), value in np.ndenumerate(values):
        text = f"{value:.0f}" if integral else f"{value:.1f}"
        if text == "-0":
            text = "0"
        if keep[r, c]:
            color = "black" if _luminance(cmap(norm(value))) > 0.5 else "white"
            ax.text(c, r, text, ha="center", va="center", fontsize=10, color=color)
        else:
            ax.add_patch(
                Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor=_DROPPED_FACE,
                          edgecolor=_DROPPED_EDGE, hatch="///", linewidth=0)
            )
            ax.text(c, r, text, ha="center", va="center", fontsize=10, color="black",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                          "edgecolor": "none", "alpha": 0.85})
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xticks(np.arange(-0.5, cols), minor=True)
    ax.set_yticks(np.arange(-0.5, rows), minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(labelsize=8)
    ax.set_ylabel("timestep", fontsize=9)
    ax.set_xlabel(f"channel\n{caption}", fontsize=9)
    ax.set_title(_wrap_call(title, 50), fontsize=8.5, **_MONO)


def _seeds_figure(p: float, seed: int) -> Any:
    import torch

    import dropkit.functional as DF

    x = torch.arange(35.0, dtype=torch.float64).reshape(1, 7, 5)
    shape = tuple(x.shape)
    P, s = _fmt(p), seed
    scale = _scale(p)

    def count(keep: Any, what: str, n: int) -> str:
        return f"{int(keep.sum()) // (keep.size // n)} of {n} {what} kept"

    keep_all = _keep(DF.dropout, shape, p, seed=s)
    keep_cols = _keep(DF.dropout, shape, p, noise_shape=(1, 1, 5), seed=s)
    keep_rows = _keep(DF.dropout, shape, p, noise_shape=(1, 7, 1), seed=s)
    alpha = DF.alpha_dropout(x, p, seed=s)
    dropped_alpha = alpha[torch.from_numpy(~keep_all)]
    fill = f"{dropped_alpha[0].item():.3f}" if dropped_alpha.numel() else "-"
    no_drop = torch.ones(shape, dtype=torch.bool).numpy()
    panels = [
        (x, no_drop, "x = torch.arange(35.).reshape(1, 7, 5)",
         "input: (samples, timesteps, channels)"),
        (DF.dropout(x, p, seed=s), keep_all, f"dropout(x, {P}, seed={s})",
         f"plain dropout: single cells, {count(keep_all, 'cells', 35)},\n"
         + ("p_eff = 1: all zeros" if _drops_all(p) else
            f"kept values scaled by 1/(1 - p) = {scale:.4g}")),
        (DF.dropout(x, p, noise_shape=(1, 1, 5), seed=s), keep_cols,
         f"dropout(x, {P}, noise_shape=(1, 1, 5), seed={s})",
         "= SpatialDropout1D channels_last: whole columns\n"
         f"(channels / embedding dims), {count(keep_cols, 'columns', 5)}"),
        (DF.dropout(x, p, noise_shape=(1, 7, 1), seed=s), keep_rows,
         f"dropout(x, {P}, noise_shape=(1, 7, 1), seed={s})",
         f"= TimestepDropout: whole rows (timesteps),\n{count(keep_rows, 'rows', 7)}"),
        (DF.dropout(x, p, mode="vanilla", seed=s), keep_all,
         f'dropout(x, {P}, mode="vanilla", seed={s})',
         "vanilla mode: kept values not scaled\n(eval multiplies by 1 - p instead)"),
        (DF.gaussian_dropout(x, p, seed=s), no_drop if p < 1 else ~no_drop,
         f"gaussian_dropout(x, {P}, seed={s})",
         "Gaussian dropout: nothing dropped, every value\n"
         f"times N(1, p/(1-p)) noise, sd = {math.sqrt(p / (1 - p)):.3g}" if p < 1 else
         "Gaussian dropout at p = 1 (infinite variance):\nall zeros"),
        (alpha, keep_all, f"alpha_dropout(x, {P}, seed={s})",
         f"alpha dropout: dropped cells set to {fill},\nkept cells a*x + b (SELU mean/var kept)"),
    ]
    fig = _new_figure(17.0, 12.0)
    axes = fig.subplots(2, 4)
    for ax, (values, keep, title, caption) in zip(axes.flat, panels, strict=False):
        _value_grid(ax, values[0].numpy(), keep[0], title, caption)
    legend = axes.flat[-1]
    legend.axis("off")
    legend.text(
        0.0, 0.95,
        "How to read this figure\n\n"
        "x is the seeds' tensor of shape (1, 7, 5):\n"
        "1 sample, 7 timesteps (rows), 5 channels (columns).\n\n"
        "Grey hatched cells were dropped; the number\n"
        "written in every cell is the output value.\n"
        "Kept cells are coloured by value (per panel).\n\n"
        f"{_p_text(p)}, seed = {seed}: every panel uses the\n"
        "same seed, so panels with the same noise shape\n"
        "make the same decisions (dropout, vanilla and\n"
        "alpha dropout drop the same cells).\n\n"
        "All calls are dropkit.functional.*",
        va="top", ha="left", fontsize=10, transform=legend.transAxes,
    )
    fig.suptitle(
        "The seeds' example: what each variant drops in a (samples, timesteps, channels) tensor",
        fontsize=13,
    )
    return fig


# ----------------------------------------------------------------------------- image-like


def _rgb_discs(size: int = 32) -> Any:
    """An RGB-like (1, 3, size, size) tensor: three soft overlapping discs with gradients."""
    import torch

    coords = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centres = [(-0.22, -0.3), (-0.22, 0.3), (0.3, 0.0)]  # (y, x) of the R, G, B discs
    shading = [0.65 + 0.35 * (-xx), 0.65 + 0.35 * xx, 0.65 + 0.35 * (-yy)]
    channels = []
    for (cy, cx), shade in zip(centres, shading, strict=True):
        dist = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        disc = torch.sigmoid((0.5 - dist) / 0.05)
        channels.append(0.1 + 0.9 * disc * shade.clamp(0.0, 1.0))
    return torch.stack(channels).unsqueeze(0)


def _image_figure(p: float, seed: int) -> Any:
    import matplotlib
    import numpy as np

    import dropkit.functional as DF

    x = _rgb_discs()
    shape = tuple(x.shape)
    P, s = _fmt(p), seed
    scale = _scale(p)
    columns = [
        ("input x", x, np.ones(shape, dtype=bool), 1.0),
        (f"dropout(x, {P}, seed={s})", DF.dropout(x, p, seed=s),
         _keep(DF.dropout, shape, p, seed=s), scale),
        (f"spatial_dropout2d(x, {P}, seed={s})", DF.spatial_dropout2d(x, p, seed=s),
         _keep(DF.spatial_dropout2d, shape, p, seed=s), scale),
    ]
    names = ("R", "G", "B")
    cmaps = ("Reds", "Greens", "Blues")
    fig = _new_figure(11.0, 14.5)
    axes = fig.subplots(4, 3)
    for col, (title, out, keep, vmax) in enumerate(columns):
        values = out[0].numpy()
        keep = keep[0]
        rgb = np.clip(np.moveaxis(values, 0, -1) / vmax, 0.0, 1.0)
        ax = axes[0, col]
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(_wrap_call(title, 44), fontsize=10, **_MONO)
        if col == 0:
            ax.set_ylabel("RGB composite", fontsize=10)
        kept_pixels = int(keep.sum())
        ax.set_xlabel(
            f"{kept_pixels} of {keep.size} values kept ({kept_pixels / keep.size:.1%})"
            if col else "(1, 3, 32, 32): three soft discs",
            fontsize=9,
        )
        for c in range(3):
            ax = axes[c + 1, col]
            cmap = matplotlib.colormaps[cmaps[c]].with_extremes(bad="black")
            ax.imshow(np.ma.masked_array(values[c], mask=~keep[c]), cmap=cmap, vmin=0.0,
                      vmax=vmax, interpolation="nearest")
            if col == 0:
                ax.set_ylabel(f"channel {c} ({names[c]})", fontsize=10)
                continue
            kept_c = int(keep[c].sum())
            if kept_c == 0:
                ax.text(15.5, 15.5, "whole channel\ndropped", ha="center", va="center",
                        color="white", fontsize=11, fontweight="bold")
            ax.set_xlabel(f"channel {c}: {kept_c} of {keep[c].size} pixels kept",
                          fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Image-like tensor (1, 3, 32, 32), one row per channel: dropout drops single pixels,\n"
        "spatial_dropout2d drops whole channels (black = dropped; colour scale 0 to "
        + (f"{scale:.4g} = 1/(1-p) after dropout)" if not _drops_all(p) else "1)")
        + f"\n{_p_text(p)}, seed = {seed}",
        fontsize=12,
    )
    return fig


# ----------------------------------------------------------------------------- masks


def _mosaic(keep: Any, tiles_per_row: int) -> Any:
    """(C, H, W) masks as a mosaic of C tiles with one-pixel NaN gaps."""
    import numpy as np

    count, height, width = keep.shape
    rows = math.ceil(count / tiles_per_row)
    out = np.full((rows * (height + 1) - 1, tiles_per_row * (width + 1) - 1), np.nan)
    for c in range(count):
        r, k = divmod(c, tiles_per_row)
        out[r * (height + 1): r * (height + 1) + height,
            k * (width + 1): k * (width + 1) + width] = keep[c]
    return out


def _masks_figure(p: float, seed: int) -> Any:
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    import dropkit.functional as DF

    P, s = _fmt(p), seed
    seq = (1, 16, 24)
    img_cf, img_cl = (1, 6, 8, 8), (1, 8, 8, 6)

    def fraction(keep: Any, units: str, n: int) -> str:
        kept = int(keep.sum()) // (keep.size // n)
        return f"{_p_text(p)}: kept {kept} of {n} {units}, keep fraction {keep.mean():.3f}"

    k_drop = _keep(DF.dropout, seq, p, seed=s)
    k_1cf = _keep(DF.spatial_dropout1d, seq, p, seed=s)
    k_1cl = _keep(DF.spatial_dropout1d, seq, p, data_format="channels_last", seed=s)
    k_ts = _keep(DF.timestep_dropout, seq, p, seed=s)
    k_2cf = _keep(DF.spatial_dropout2d, img_cf, p, seed=s)
    k_2cl = _keep(DF.spatial_dropout2d, img_cl, p, data_format="channels_last", seed=s)
    panels = [
        (k_drop[0], f"dropout(x, {P}, seed={s})",
         f"x: (1, 16, 24), noise shape (1, 16, 24): single elements\n"
         f"{fraction(k_drop, 'elements', 16 * 24)}", ("axis 1", "axis 2")),
        (k_1cf[0], f"spatial_dropout1d(x, {P}, seed={s})",
         "x: (N, C, L) = (1, 16, 24), noise shape (1, 16, 1): whole channels (rows)\n"
         f"{fraction(k_1cf, 'channels', 16)}", ("channel C", "position L")),
        (k_1cl[0], f'spatial_dropout1d(x, {P}, data_format="channels_last", seed={s})',
         "x: (N, L, C) = (1, 16, 24), noise shape (1, 1, 24): whole channels (columns)\n"
         f"{fraction(k_1cl, 'channels', 24)}", ("position L", "channel C")),
        (k_ts[0], f"timestep_dropout(x, {P}, seed={s})",
         "x: (N, T, F) = (1, 16, 24), noise shape (1, 16, 1): whole timesteps (rows)\n"
         f"{fraction(k_ts, 'timesteps', 16)}", ("timestep T", "feature F")),
        (_mosaic(k_2cf[0], 3), f"spatial_dropout2d(x, {P}, seed={s})",
         "x: (N, C, H, W) = (1, 6, 8, 8), noise shape (1, 6, 1, 1): whole 8x8 channels\n"
         f"{fraction(k_2cf, 'channels', 6)}", ("x[0, c] for c = 0..5 (8x8 tiles)", "")),
        (_mosaic(np.moveaxis(k_2cl[0], -1, 0), 3),
         f'spatial_dropout2d(x, {P}, data_format="channels_last", seed={s})',
         "x: (N, H, W, C) = (1, 8, 8, 6), noise shape (1, 1, 1, 6): whole channels x[..., c]\n"
         f"{fraction(k_2cl, 'channels', 6)}", ("x[0, :, :, c] for c = 0..5 (8x8 tiles)", "")),
    ]
    cmap = ListedColormap(["#f2f2f2", _KEPT_MASK]).with_extremes(bad="white")
    fig = _new_figure(19.0, 11.0)
    axes = fig.subplots(2, 3)
    for ax, (mask, title, caption, (ylabel, xlabel)) in zip(axes.flat, panels, strict=True):
        ax.imshow(mask.astype(float), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(_wrap_call(title, 72), fontsize=9, **_MONO)
        ax.set_xlabel((f"{xlabel}\n" if xlabel else "") + caption, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if title.startswith("spatial_dropout2d"):
            for c in range(6):
                r, k = divmod(c, 3)
                kept = mask[r * 9 + 3, k * 9 + 3] == 1
                ax.text(k * 9 + 3.5, r * 9 + 3.5, f"c = {c}\n" + ("kept" if kept else "dropped"),
                        ha="center", va="center", fontsize=11,
                        color="white" if kept else "black")
    fig.legend(
        handles=[Patch(facecolor=_KEPT_MASK, label="kept (mask 1)"),
                 Patch(facecolor="#f2f2f2", edgecolor="#999999", label="dropped (mask 0)")],
        loc="outside lower center", ncols=2, fontsize=10,
    )
    fig.suptitle(
        f"Keep masks, x = torch.ones(shape), seed = {seed}: the same seed and noise-shape size "
        "give the same decisions\n(spatial_dropout1d channels_first and timestep_dropout share the "
        "noise shape (1, 16, 1); both spatial_dropout2d layouts draw 6 decisions)",
        fontsize=12,
    )
    return fig


# ----------------------------------------------------------------------------- structured


def _structured_figure(p: float, seed: int) -> Any:
    """DropBlock (per channel and shared, two block sizes) and DropPath keep masks."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    import dropkit.functional as DF

    P, s = _fmt(p), seed
    shape = (1, 6, 28, 28)

    def caption(keep: Any) -> str:
        return f"{_p_text(p)}: dropped fraction {1.0 - keep.mean():.3f}"

    panels = []
    for block, per_channel in ((3, True), (7, True), (7, False)):
        keep = _keep(DF.drop_block2d, shape, p, block_size=block, per_channel=per_channel,
                     seed=s)
        call = f"drop_block2d(x, {P}, block_size={block}"
        call += ", per_channel=False" if not per_channel else ""
        panels.append((_mosaic(keep[0], 3), call + f", seed={s})",
                       "x: (1, 6, 28, 28), 6 channels as tiles; " + caption(keep)))
    keep = _keep(DF.drop_path, (16, 28), p, seed=s)
    panels.append((keep, f"drop_path(x, {P}, seed={s})",
                   "x: (16, 28): whole samples (rows) dropped; " + caption(keep)))
    cmap = ListedColormap(["#f2f2f2", _KEPT_MASK]).with_extremes(bad="white")
    fig = _new_figure(17.0, 11.0)
    for ax, (mask, title, text) in zip(fig.subplots(2, 2).flat, panels, strict=True):
        ax.imshow(np.asarray(mask, dtype=float), cmap=cmap, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(_wrap_call(title, 72), fontsize=9, **_MONO)
        ax.set_xlabel(text, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Structured dropout keep masks (blue kept, grey dropped), x = torch.ones(shape): "
        "DropBlock's seed rate is solved so that\nthe expected dropped fraction is p for "
        "every block size; per_channel=False shares one mask across channels",
        fontsize=12,
    )
    return fig


# ----------------------------------------------------------------------------- volume


def _volume(channels: int = 4, depth: int = 4, size: int = 16) -> Any:
    """A (1, C, D, H, W) volume: a ball, a shell, a bar moving with depth and a depth ramp."""
    import torch

    d = torch.linspace(-1.0, 1.0, depth, dtype=torch.float64).view(depth, 1, 1)
    h = torch.linspace(-1.0, 1.0, size, dtype=torch.float64).view(1, size, 1)
    w = torch.linspace(-1.0, 1.0, size, dtype=torch.float64).view(1, 1, size)
    radius = torch.sqrt(d**2 * 0.5 + h**2 + w**2)
    shapes = [
        torch.sigmoid((0.8 - radius) / 0.08),
        torch.exp(-(((radius - 0.7) / 0.12) ** 2)),
        torch.sigmoid((0.25 - (w - 0.6 * d).abs()) / 0.06).expand(depth, size, size),
        ((d + 1.0) / 2.0 * (1.0 - 0.5 * (h**2 + w**2))).clamp(0.0, 1.0),
    ]
    return torch.stack([0.1 + 0.9 * v for v in shapes[:channels]]).unsqueeze(0)


def _volume_figure(p: float, seed: int) -> Any:
    import matplotlib
    import numpy as np
    from matplotlib.patches import Rectangle

    import dropkit.functional as DF

    x = _volume()
    _, channels, depth, _, _ = x.shape
    shape = tuple(x.shape)
    P, s = _fmt(p), seed
    out = DF.spatial_dropout3d(x, p, seed=s)[0].numpy()
    keep = _keep(DF.spatial_dropout3d, shape, p, seed=s)[0]
    scale = _scale(p)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=_DROPPED_FACE)
    fig = _new_figure(2.0 * depth * 2 + 1.0, 2.0 * channels + 1.6)
    left, right = fig.subfigures(1, 2, wspace=0.03)
    kept = int(keep.reshape(channels, -1).all(axis=1).sum())
    left.suptitle("input x[0, c, d]\nx: (N, C, D, H, W) = (1, 4, 4, 16, 16)", fontsize=11)
    right.suptitle(
        f"spatial_dropout3d(x, {P}, seed={s})[0, c, d]\n"
        f"noise shape (1, 4, 1, 1, 1): {kept} of {channels} channels kept",
        fontsize=11, **_MONO,
    )
    for sub, values, vmax in ((left, x[0].numpy(), 1.0), (right, out, scale)):
        axes = sub.subplots(channels, depth)
        for c in range(channels):
            for k in range(depth):
                ax = axes[c, k]
                dropped = sub is right and not keep[c, k].any()
                ax.imshow(np.ma.masked_array(values[c, k], mask=np.full_like(
                    values[c, k], dropped, dtype=bool)), cmap=cmap, vmin=0.0, vmax=vmax,
                    interpolation="nearest")
                if dropped:
                    ax.add_artist(Rectangle(
                        (-0.5, -0.5), 16, 16, facecolor="none", edgecolor=_DROPPED_EDGE,
                        hatch="//", linewidth=0))
                    ax.text(7.5, 7.5, "dropped", ha="center", va="center", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_title(f"d = {k}", fontsize=9)
                if k == 0:
                    ax.set_ylabel(f"channel {c}", fontsize=9)
    fig.suptitle(
        f"spatial_dropout3d drops whole channels of a volume: every depth slice of a channel "
        f"shares one decision ({_p_text(p)}, seed = {seed})",
        fontsize=12,
    )
    return fig


#: The pictures ``run`` writes, in order: (file name, drawing function, what it shows).
PICTURES: tuple[tuple[str, Callable[[float, int], Any], str], ...] = (
    ("seeds_1x7x5.png", _seeds_figure, "the seeds' 1x7x5 tensor through every variant"),
    ("image_like.png", _image_figure, "an image-like tensor under dropout vs spatial dropout"),
    ("masks.png", _masks_figure, "keep masks side by side"),
    ("volume.png", _volume_figure, "a volume under spatial_dropout3d"),
    ("structured.png", _structured_figure,
     "DropBlock (per channel and shared, two block sizes) and DropPath keep masks"),
)
