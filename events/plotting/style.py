"""matplotlib, imported on first use and never through pyplot: figures are plain
``matplotlib.figure.Figure`` objects rendered by Agg, so plotting works headless, inside a trainer,
and leaves the caller's pyplot state and backend alone. Also: CJK fonts and saving."""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = [
    "PlottingUnavailable",
    "matplotlib_figure",
    "font_settings",
    "find_cjk_font",
    "base_rc",
    "save_figure",
    "rasterize",
    "write_png",
    "RUN_COLORS",
]

# Colour-blind-safe cycle (Okabe-Ito) for runs in a comparison.
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")

# Hangul (jamo, compatibility jamo, syllables), CJK ideographs and punctuation, kana, full-width forms.
_CJK = re.compile("[\u1100-\u11ff\u2e80-\u9fff\u3130-\u318f\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
_CJK_FONT_HINTS = (
    "Noto Sans CJK", "Noto Serif CJK", "Noto Sans KR", "Noto Sans JP", "Noto Sans SC", "NanumGothic",
    "NanumBarunGothic", "Nanum", "Malgun Gothic", "Apple SD Gothic Neo", "AppleGothic", "Source Han Sans",
    "UnDotum", "Baekmuk", "WenQuanYi", "Droid Sans Fallback", "IPAexGothic", "IPAGothic", "TakaoGothic",
    "Microsoft YaHei", "SimHei", "PingFang", "Hiragino", "Unifont",
)


class PlottingUnavailable(ImportError):
    """matplotlib is not installed."""


def matplotlib_figure() -> Any:
    """The ``matplotlib.figure.Figure`` class (raises PlottingUnavailable naming the extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlottingUnavailable("plotting needs matplotlib: pip install 'detr-telemetry[plot]'") from error
    return Figure


def _match_cjk(names: Iterable[str]) -> Optional[str]:
    names = sorted(names)
    for hint in _CJK_FONT_HINTS:
        for name in names:
            if hint.lower().replace(" ", "") in name.lower().replace(" ", ""):
                return name
    return next((name for name in names if "cjk" in name.lower()), None)


def find_cjk_font() -> Optional[str]:
    """The name of an installed font with Korean/Chinese/Japanese glyphs, or None.

    matplotlib's font list is cached on first use, so a font installed later is looked for
    among the system's font files too and registered.
    """
    from matplotlib import font_manager

    known = _match_cjk(entry.name for entry in font_manager.fontManager.ttflist)
    if known:
        return known
    files = {os.path.basename(path): path for path in font_manager.findSystemFonts()}
    found = _match_cjk(files)
    if found is None:
        return None
    family = font_manager.FontProperties(fname=files[found]).get_name()
    for path in files.values():  # every weight of that family, so bold titles stay bold
        try:
            if font_manager.FontProperties(fname=path).get_name() == family:
                font_manager.fontManager.addfont(path)
        except (OSError, RuntimeError):
            continue
    return family


def font_settings(texts: Iterable[str]) -> Tuple[Dict[str, Any], Optional[str]]:
    """rcParams that render ``texts`` and a note when they hold CJK characters no font can show."""
    if not any(_CJK.search(text) for text in texts if text):
        return {}, None
    font = find_cjk_font()
    if font is None:
        return {}, (
            "note: labels contain Korean/CJK characters but no CJK font is installed, so they render "
            "as boxes; install one (e.g. apt install fonts-nanum or fonts-noto-cjk) and re-run"
        )
    # A family list falls back glyph by glyph: Latin text keeps DejaVu Sans' look.
    return {"font.family": [font, "DejaVu Sans"], "axes.unicode_minus": False}, None


def base_rc() -> Dict[str, Any]:
    """Compact, legible defaults for many small panels at 300 DPI."""
    return {
        "font.size": 8,
        "axes.titlesize": 9,
        # A fixed title position: "auto" (None) measures every axis' tick labels per panel to dodge
        # top ticks we never draw (~15% of the drawing time).
        "axes.titley": 1.0,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "legend.framealpha": 0.85,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.5,
        "lines.linewidth": 1.1,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.formatter.limits": (-3, 4),
        # Tick labels say the value: an additive offset ("+4e3", "1e-5+6.51157e1") is illegible.
        "axes.formatter.useoffset": False,
        "path.simplify": True,
    }


def rasterize(figure: Any, dpi: int) -> Any:
    """``figure`` drawn once by Agg at ``dpi``, as an opaque RGB ``PIL.Image``.

    ``savefig`` would lay the figure out in a dry run first and encode RGBA; our figures have
    an opaque white background, so RGB loses nothing and is a quarter less to compress.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        canvas.draw()
    width, height = canvas.get_width_height()
    return Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")


def write_png(image: Any, path: str, dpi: int) -> str:
    """Write a rasterised figure; zlib level 1 (files ~20% larger than level 6, ~1.5x faster).

    PIL releases the GIL while compressing, so this may run in a thread beside the next draw.
    """
    image.save(path, format="png", compress_level=1, dpi=(dpi, dpi))
    return path


def save_figure(figure: Any, path: str, dpi: int, fmt: str) -> str:
    """Save ``figure`` to ``path`` as ``fmt`` (png/svg/pdf); returns the path."""
    if fmt == "png":
        return write_png(rasterize(figure, dpi), path, dpi)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.savefig(path, dpi=dpi, format=fmt)
    return path
