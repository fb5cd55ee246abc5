"""The report as a PDF, drawn with matplotlib alone (no browser at run time).

A4 portrait pages: the verdict banner, summary and sign-off first; then every table
(continued over pages as needed, failing cells red), every figure on its own page, the
appendix and the text sections (the geometry file) in a monospace font.
"""

from __future__ import annotations

import io
import textwrap

from .report import Cell, Report, _columns, _plain_text, _plt

__all__ = ["render_pdf"]

A4 = (8.27, 11.69)
_MARGIN = 0.06
_FAIL_BG, _PASS_FG, _HEAD_BG = "#f8c8c8", "#185c18", "#e8e8e8"


class _Pages:
    """A cursor over A4 pages: blocks are placed top-down and a new page starts when full."""

    def __init__(self, pdf, title: str):
        self.pdf, self.title = pdf, title
        self.plt = _plt()
        self.fig = None
        self.y = 0.0
        self.page = 0
        self.new_page()

    def new_page(self) -> None:
        self.flush()
        self.fig = self.plt.figure(figsize=A4)
        self.page += 1
        self.fig.text(_MARGIN, 0.975, self.title, fontsize=7, color="#666")
        self.fig.text(1 - _MARGIN, 0.975, f"page {self.page}", fontsize=7, color="#666", ha="right")
        self.y = 0.955

    def flush(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.plt.close(self.fig)
            self.fig = None

    def need(self, height: float) -> None:
        if self.y - height < _MARGIN:
            self.new_page()

    def text(self, s: str, size: float = 9, weight: str = "normal", color: str = "#222", family: str = "sans-serif",
             width: int = 110) -> None:
        lines = []
        for para in str(s).splitlines() or [""]:
            lines += textwrap.wrap(para, width) or [""]
        line_h = size / 72 / A4[1] * 1.35
        for ln in lines:
            self.need(line_h)
            self.fig.text(_MARGIN, self.y - line_h, ln, fontsize=size, weight=weight, color=color, family=family)
            self.y -= line_h
        self.y -= line_h * 0.3

    def heading(self, s: str, size: float = 11) -> None:
        self.need(0.06)
        self.y -= 0.008
        self.text(s, size=size, weight="bold")

    def banner(self, b: dict) -> None:
        ok = b.get("label") == "PASS"
        reasons = [f"- {r}" for r in b.get("reasons") or []]
        views = "   ".join(f"{k}: {v}" for k, v in (b.get("views") or {}).items())
        body = []
        for r in reasons:
            body += textwrap.wrap(r, 115, subsequent_indent="  ")
        h = 0.05 + 0.012 * len(body)
        self.need(h)
        ax = self.fig.add_axes([_MARGIN, self.y - h, 1 - 2 * _MARGIN, h])
        ax.set_axis_off()
        ax.add_patch(self.plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes,
                                        facecolor="#e3f4e3" if ok else "#fbe1e1",
                                        edgecolor="#2e8b2e" if ok else "#c02020", lw=2))
        color = _PASS_FG if ok else "#7a0c0c"
        ax.text(0.015, 1 - 0.022 / h, f"QA {b.get('label', '')}", fontsize=17, weight="bold", color=color,
                va="top", transform=ax.transAxes)
        ax.text(0.2, 1 - 0.018 / h, f"{b.get('text', '').strip()}\n{views}", fontsize=8.5, color=color, va="top",
                transform=ax.transAxes)
        for i, line in enumerate(body):
            ax.text(0.015, 1 - (0.052 + 0.012 * i) / h, line, fontsize=7, color=color, va="top",
                    transform=ax.transAxes)
        self.y -= h + 0.012

    def table(self, heading: str, rows: list, max_rows: int = 38) -> None:
        if not rows:
            return
        cols = _columns(rows)
        fontsize = 7 if len(cols) <= 8 else 6
        # characters that fit across the page at this font size (about 0.55 em per character)
        capacity = int((1 - 2 * _MARGIN) * A4[0] * 72 / (0.56 * fontsize)) - 2 * len(cols)
        raw = [[_plain_text(r.get(c)) if c in r else "" for c in cols] for r in rows]
        widths = _column_widths(cols, raw, capacity)
        head = ["\n".join(textwrap.wrap(str(c), w) or [""]) for c, w in zip(cols, widths)]
        cells = [["\n".join(textwrap.wrap(x, w) or [""]) for x, w in zip(r, widths)] for r in raw]
        states = [[(r.get(c).state if isinstance(r.get(c), Cell) else ("fail" if r.get(c) is False else None))
                   for c in cols] for r in rows]
        line_h = fontsize / 72 / A4[1] * 1.45
        start = 0
        first = True
        while start < len(cells):
            chunk = []
            height = (max(h.count("\n") for h in head) + 1) * line_h + 0.004
            for i in range(start, min(len(cells), start + max_rows)):
                hrow = (max(c.count("\n") for c in cells[i]) + 1) * line_h + 0.004
                if chunk and height + hrow > 0.88:
                    break
                chunk.append(i)
                height += hrow
            title = heading if first else f"{heading} (continued)"
            self.need(height + 0.05)
            self.heading(title, size=10)
            frac = [(w + 2) / sum(x + 2 for x in widths) for w in widths]
            ax = self.fig.add_axes([_MARGIN, self.y - height, 1 - 2 * _MARGIN, height])
            ax.set_axis_off()
            tab = ax.table(cellText=[cells[i] for i in chunk], colLabels=head, colWidths=frac, loc="upper left",
                           cellLoc="left", colLoc="left")
            tab.auto_set_font_size(False)
            tab.set_fontsize(fontsize)
            nh = max(h.count("\n") for h in head) + 1
            for (r, c), cell in tab.get_celld().items():
                cell.set_linewidth(0.3)
                if r == 0:
                    cell.set_facecolor(_HEAD_BG)
                    cell.set_height(nh * line_h / height + 0.004 / height)
                    continue
                i = chunk[r - 1]
                n = max(x.count("\n") for x in cells[i]) + 1
                cell.set_height(n * line_h / height + 0.004 / height)
                st = states[i][c]
                if st == "fail":
                    cell.set_facecolor(_FAIL_BG)
                    cell.get_text().set_color("#900")
                    cell.get_text().set_weight("bold")
                elif st == "pass":
                    cell.get_text().set_color(_PASS_FG)
            self.y -= height + 0.015
            start = chunk[-1] + 1
            first = False

    def image(self, png: bytes, caption: str, name: str) -> None:
        import matplotlib.image as mpimg

        img = mpimg.imread(io.BytesIO(png), format="png")
        h_px, w_px = img.shape[:2]
        width = 1 - 2 * _MARGIN
        height = min(width * (h_px / w_px) * A4[0] / A4[1], 0.75)
        self.need(height + 0.06)
        self.heading(name, size=9)
        ax = self.fig.add_axes([_MARGIN, self.y - height, width, height])
        ax.imshow(img)
        ax.set_axis_off()
        self.y -= height + 0.008
        self.text(caption, size=7, color="#555", width=140)


def _column_widths(cols: list, raw: list, capacity: int) -> list:
    """Characters per column: each column's longest entry (header words at least), then the
    widest columns narrowed in turn until the row fits ``capacity`` characters."""
    widths = []
    for c, col in zip(cols, zip(*raw) if raw else [[]] * len(cols)):
        longest_word = max([len(w) for w in str(c).split()] + [4])
        widths.append(max([longest_word] + [len(x) for x in col]))
    widths = [min(w, 70) for w in widths]
    floor = 5
    while sum(widths) > capacity and max(widths) > floor:
        k = max(range(len(widths)), key=lambda i: widths[i])
        widths[k] -= 1
    return widths


def render_pdf(report: Report) -> bytes:
    """Render a :class:`~tomoprior.validation.report.Report` as PDF bytes."""
    from matplotlib.backends.backend_pdf import PdfPages

    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": report.title, "Creator": "tomoprior"}) as pdf:
        pages = _Pages(pdf, report.title)
        pages.text(report.title, size=14, weight="bold", width=80)
        created = report.numbers.get("created_utc")
        pages.text("Lengths in mm, angles in degrees, image positions in detector pixels. Every number is also in "
                   "report.json." + (f" Created {created}." if created else ""), size=7.5, color="#555")
        if report.banner:
            pages.banner(report.banner)
        for note in report.notes:
            pages.text(note, size=8, color="#8a6d00")
        if report.summary:
            rows = report.summary if isinstance(report.summary[0], dict) else \
                [{"quantity": k, "value": v} for k, v in report.summary]
            pages.table("Summary", rows)
        if report.signoff:
            sign = [{"field": k, "value": v} for k, v in report.signoff]
            sign += [{"field": "reviewed by (name, signature)", "value": ""}, {"field": "date", "value": ""}]
            pages.table("Sign-off", sign)
        for heading, rows in report.tables:
            pages.table(heading, rows)
        for fig in report.figures:
            pages.new_page()
            pages.image(fig.png, fig.caption, fig.filename)
        if report.appendix or report.texts:
            pages.new_page()
            pages.heading("Appendix", size=13)
        for heading, rows in report.appendix:
            pages.table(heading, rows)
        for heading, text in report.texts:
            pages.heading(heading, size=10)
            pages.text(text, size=6.5, family="monospace", width=130)
        pages.flush()
    return buf.getvalue()
