"""One report writer for every track: a flat `metrics.json` and an HTML page with tables and image grids.

    out_dir/metrics.json      flat {name: number | string | bool | null}, keys sorted; NaN/inf -> null
    out_dir/report.html       title, optional embedded-default banner, notes, metrics, tables, figures, grids
    out_dir/images/           grid-NN-*.png (assets.contact_sheet) and fig-NN-* copies of the figures,
                              referenced relatively

PNG files beside the page rather than base64 inside it, so MLflow's artifact view and Dagster can show
each image on its own and the page stays small. Every file is written atomically (assets.atomic), images
first and the page last, so the page never points at an image that is not there yet; PNGs a previous
report left under images/ with this writer's names (grid-*, fig-*) are removed. All text is escaped.
Output is deterministic: the same inputs give the same bytes (no timestamps).
"""

from __future__ import annotations

import html
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from assets.atomic import atomic_path, write_json, write_text
from assets.contact_sheet import grid, save_png

EMBEDDED_BANNER = "Embedded default: small models / sample media \u2014 numbers are not comparable with real weights"
IMAGES_DIR = "images"
_GENERATED = re.compile(r"^(grid|fig)-\d{2}-[a-z0-9-]*\.(png|jpe?g|gif|webp|svg)$")


@dataclass(frozen=True)
class ReportPaths:
    metrics_json: Path
    html: Path
    images: list[Path]


def _scalar(value: Any, key: str) -> float | int | str | bool | None:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _scalar(value.item(), key)
    raise TypeError(f"metric {key!r}: metrics.json is flat, values must be numbers, strings, bools or None, "
                    f"got {type(value).__name__}")


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int | str | bool | None]:
    """The JSON-ready form: str keys, plain Python scalars, non-finite floats as None; nesting is an error."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        out[key] = _scalar(value, key)
    return dict(sorted(out.items()))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "image"


def _fmt(value: Any) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return "\u2014" if math.isnan(value) else str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            text = _fmt(value)
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for key, value in metrics.items():
        text = _fmt(value)
        if isinstance(value, str) and "\n" in value:
            cell = f"<td><pre>{html.escape(value)}</pre></td>"
        else:
            cls = "" if isinstance(value, str) else ' class="num"'
            cell = f"<td{cls}>{html.escape(text)}</td>"
        rows.append(f"<tr><th>{html.escape(key)}</th>{cell}</tr>")
    return f"<table class=\"metrics\"><tbody>{''.join(rows)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#222;max-width:1400px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:1.8rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}thead th{background:#f3f3f3}
pre{margin:0;font-size:.8rem}figure{margin:.8rem 0}figcaption{font-size:.9rem;color:#555}
img{max-width:100%;border:1px solid #ccc}
.banner{background:#fff3cd;border:1px solid #e0b000;padding:.6rem .8rem;font-weight:600;margin:.8rem 0}
"""


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    metrics: Mapping[str, float | int | str | None],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    grids: Sequence[tuple[str, Mapping[str, Sequence[np.ndarray]]]] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    notes: Sequence[str] | None = None,
    embedded_default: bool = False,
) -> ReportPaths:
    """Write metrics.json, report.html and images/ under `out_dir` (created if missing).

    metrics: flat name -> scalar (see `flat_metrics`). tables: section title -> rows (list of dicts;
    columns in first-seen order). grids: (caption, {row label: frames}) each drawn by
    assets.contact_sheet.grid. figures: caption -> an existing image file (e.g. from pr_curve_figure),
    copied into images/. notes: paragraphs shown under the title. embedded_default: show the banner that
    says the numbers come from the small embedded models / sample media."""
    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_DIR
    flat = flat_metrics(metrics)
    tables, grids, figures, notes = tables or {}, list(grids or []), figures or {}, list(notes or [])

    written: list[Path] = []
    figure_html = []
    for i, (caption, source) in enumerate(figures.items()):
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"figure {caption!r}: {source} does not exist")
        dest = images_dir / f"fig-{i:02d}-{_slug(caption)}{source.suffix.lower() or '.png'}"
        if source.resolve() != dest.resolve():
            with atomic_path(dest) as tmp:
                shutil.copyfile(source, tmp)
        written.append(dest)
        figure_html.append(_figure(dest, caption, out_dir))
    grid_html = []
    for i, (caption, rows) in enumerate(grids):
        if not rows or not any(len(frames) for frames in rows.values()):
            raise ValueError(f"grid {caption!r}: no frames")
        dest = images_dir / f"grid-{i:02d}-{_slug(caption)}.png"
        save_png(grid({str(k): list(v) for k, v in rows.items()}, title=caption), dest)
        written.append(dest)
        grid_html.append(_figure(dest, caption, out_dir))
    if images_dir.is_dir():
        keep = {p.name for p in written}
        for stale in images_dir.iterdir():
            if _GENERATED.match(stale.name) and stale.name not in keep:
                stale.unlink()

    metrics_path = out_dir / "metrics.json"
    write_json(metrics_path, flat)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if embedded_default:
        parts.append(f'<div class="banner">{html.escape(EMBEDDED_BANNER)}</div>')
    parts += [f"<pre>{html.escape(note)}</pre>" if "\n" in note else f"<p>{html.escape(note)}</p>" for note in notes]
    parts += ["<h2>Metrics</h2>", _metrics_table(flat)]
    for name, rows in tables.items():
        parts += [f"<h2>{html.escape(name)}</h2>", _table(rows) if rows else "<p>(no rows)</p>"]
    if figure_html:
        parts += ["<h2>Figures</h2>", *figure_html]
    if grid_html:
        parts += ["<h2>Images</h2>", *grid_html]
    parts.append("</body></html>\n")
    html_path = out_dir / "report.html"
    write_text(html_path, "\n".join(parts))
    return ReportPaths(metrics_json=metrics_path, html=html_path, images=written)


def _figure(path: Path, caption: str, base: Path) -> str:
    rel = path.relative_to(base).as_posix()
    src = html.escape(rel, quote=True)
    return (f'<figure><img src="{src}" alt="{html.escape(caption, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def pr_curve_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "Precision-recall at IoU 0.5",
) -> Path:
    """Plot {name: (recall, precision)} (as from evaluation.detection_map.pr_curves) to a PNG at `path`.

    Precision values < 0 (COCOeval's 'no data') are not drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision) in curves.items():
        recall = np.asarray(recall, dtype=np.float64)
        precision = np.asarray(precision, dtype=np.float64)
        precision = np.where(precision < 0, np.nan, precision)
        ax.plot(recall, precision, label=str(name), linewidth=1.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower left")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path
