"""Self-contained HTML pages: every figure inline as a base64 PNG, the style sheet inline,
the reader's own sans-serif font, no script, no external request.

A page written here opens the same offline, from an e-mail attachment or an archive years
later: nothing is fetched (no CDN, no web font, no tracking pixel). Its Content-Security-Policy
(`default-src 'none'`) makes the browser refuse any request a page might still hold, and
`external_references` finds such a reference before the page is written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence

# The browser loads nothing but the page's own inline styles and data: images.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 1.2em 1.6em 4em; color: #1b1b1b;
       background: #ffffff; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
p.sub, p.note, figcaption, caption { color: #57606a; font-size: 0.9em; }
nav a { margin-right: 1em; color: #0b57d0; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
caption { caption-side: bottom; text-align: left; padding-top: 0.4em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { background: #fff8e6; }
figure { margin: 0.8em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
img.thumb { width: 96px; height: 96px; border: 1px solid #d0d7de; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.warn { color: #9a6700; }
.cols { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
"""


def esc(value) -> str:
    """Text for HTML (None -> an em dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def figure_png(fig) -> bytes:
    """A matplotlib Figure as PNG bytes (Agg canvas: no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def array_png(picture) -> bytes:
    """An image array as PNG bytes. Shape: [H, W, 3] uint8."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return buf.getvalue()


def img(png: bytes, alt: str, *, cls: str | None = None) -> str:
    """An <img> whose PNG is inside the page (a data: URI)."""
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<img{klass} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(png: bytes, caption: str) -> str:
    return f"<figure>{img(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def table(
    head: Sequence[str],
    rows: Iterable[Sequence],
    *,
    caption: str | None = None,
    row_classes: Sequence[str | None] | None = None,
) -> str:
    """A table of text cells (escaped); numbers are right-aligned. Cells that are already
    HTML are passed as `Markup`."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
    for i, row in enumerate(rows):
        klass = row_classes[i] if row_classes is not None else None
        out.append(f'<tr class="{klass}">' if klass else "<tr>")
        for cell in row:
            if isinstance(cell, Markup):
                out.append(f"<td>{cell}</td>")
            elif isinstance(cell, (int, float)) and not isinstance(cell, bool):
                out.append(f'<td class="num">{esc(fmt_number(cell))}</td>')
            else:
                out.append(f"<td>{esc(cell)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


class Markup(str):
    """A table cell that is HTML already (an <img>, a line break)."""


def fmt_number(value) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != value:  # NaN
        return "—"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def fmt_mean_std(value) -> str:
    """{"mean", "std"} (a probe metric over seeds) -> "0.912 ± 0.004"; a number as it is."""
    if isinstance(value, Mapping):
        mean, std = value.get("mean"), value.get("std")
        if mean is None:
            return "—"
        text = f"{mean:.3f}"
        if std is not None and value.get("n", 2) > 1:
            text += f" ± {std:.3f}"
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt_number(value)
    return esc(value)


def kv_table(pairs: Mapping | Iterable[tuple[str, object]], *, caption: str | None = None) -> str:
    """Two columns, name and value (lists and dicts as compact JSON)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    rows = []
    for k, v in items:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
        elif isinstance(v, float):
            v = f"{v:.6g}"  # a recipe's 1e-06 must not read 0.000
        elif v is not None:
            v = str(v)  # a version number (cuDNN 92400) takes no thousands separator
        rows.append((k, v))
    return table(["", "value"], rows, caption=caption)


def section(title: str, body: str, *, anchor: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, sections: Sequence[tuple[str, str, str]], *, subtitle: str = "") -> str:
    """The whole document: `sections` are (anchor, title, body HTML), listed in a contents bar."""
    nav = " ".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(t, b, anchor=a) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{esc(title)}</h1>"
        + (f'<p class="sub">{esc(subtitle)}</p>' if subtitle else "")
        + f"<nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


# src/href/srcset/poster/action/data attributes, CSS url(...) and @import: whatever a browser
# would fetch. data: URIs and in-page anchors (#...) fetch nothing.
_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|srcset|poster|action|data|formaction)\s*=\s*["']?\s*([^"'\s>]+))"""
    r"""|(?:url\(\s*["']?\s*([^"')\s]+))|(?:@import\s+["']?([^"';\s]+))""",
    re.IGNORECASE,
)


def external_references(text: str) -> list[str]:
    """Every reference in an HTML page that would make a browser fetch something."""
    found = []
    for m in _REFERENCE.finditer(text):
        ref = next(g for g in m.groups() if g is not None)
        if ref.startswith("#") or ref.lower().startswith("data:"):
            continue
        found.append(ref)
    return found


def records_table(records: Sequence[Mapping], *, caption: str | None = None) -> str:
    """A list of flat-ish dicts as one table: scalar keys become columns, a `metrics` dict
    of {"mean", "std"} one column per metric, a `paper` dict one column per figure."""
    columns: list[str] = []
    for r in records:
        for k, v in r.items():
            if k in ("metrics", "paper") and isinstance(v, Mapping):
                for m in v:
                    if m == "source":
                        continue
                    name = f"{m}" if k == "metrics" else f"{m} (paper)"
                    if name not in columns:
                        columns.append(name)
            elif k not in columns and not isinstance(v, (dict, list)):
                columns.append(k)
    rows = []
    for r in records:
        metrics = r.get("metrics") if isinstance(r.get("metrics"), Mapping) else {}
        paper = r.get("paper") if isinstance(r.get("paper"), Mapping) else {}
        row = []
        for c in columns:
            if c.endswith(" (paper)") and c[: -len(" (paper)")] in paper:
                row.append(fmt_mean_std(paper[c[: -len(" (paper)")]]))
            elif c in metrics:
                row.append(fmt_mean_std(metrics[c]))
            else:
                v = r.get(c)
                row.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        rows.append(row)
    return table(columns, rows, caption=caption)


def render_tables_page(
    report: Mapping,
    *,
    title: str = "slimp: benchmark tables",
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence]]] | None = None,
) -> str:
    """One self-contained page for `benchmarks/paper_tables.py --report`: the report JSON's
    record lists ("classification", "retrieval", "multilabel"), its "holdout" and "run"
    blocks and its warnings. `tables` = [(title, head, body)] (e.g. the script's own
    `classification_table(...)` layouts) replaces the generic record tables."""
    sections = []
    if tables is not None:
        body = "".join(f"<h3>{esc(t)}</h3>" + table(h, b) for t, h, b in tables)
        sections.append(("tables", "Tables", body))
    else:
        for key in ("classification", "retrieval", "multilabel"):
            records = report.get(key)
            if records:
                sections.append((key, key.capitalize(), records_table(records)))
    holdout = report.get("holdout")
    if isinstance(holdout, Mapping) and holdout:
        body = "".join(
            f"<h3>{esc(ds)}</h3>" + kv_table(info if isinstance(info, Mapping) else {"": info})
            for ds, info in holdout.items()
        )
        sections.append(("holdout", "Held-out patients", body))
    for key in ("sm3",):
        if report.get(key):
            sections.append(
                (key, key.upper(), f"<pre>{esc(json.dumps(report[key], indent=1))}</pre>")
            )
    run = report.get("run")
    if isinstance(run, Mapping) and run:
        sections.append(("run", "Run", kv_table(run)))
    warnings = report.get("warnings") or []
    if warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
        sections.append(("warnings", "Warnings", f'<ul class="warn">{items}</ul>'))
    return page(title, sections)
