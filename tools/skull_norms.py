"""The procedural skull against the pediatric cranial norms: a table, a figure and a JSON file.

For each age and sex, builds the normal skull for ``--seeds`` seeds, measures it on the
analytic model (:func:`tomoprior.phantoms.skull.measure.cranial_measures`: frontal, parietal
and occipital bone thickness along the normal averaged over each bone, cephalic index,
intracranial volume) and compares the mean over seeds with the normative model of Porras et
al. (:mod:`tomoprior.phantoms.skull.norms`). Writes ``<out>/skull_norms.json`` (every
measurement and the comparison) and ``<out>/skull_norms.png`` (phantom mean +- sd vs norm
by age, per measure and sex), and prints a Markdown table for ``docs/skull.md``.

Usage::

    PYTHONPATH=. python tools/skull_norms.py [--out docs/figures] [--seeds 20] [--ages 0.25 0.5 1 2 3 4 6]
    PYTHONPATH=. python tools/skull_norms.py --replot    # the figure and table again from the JSON
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tomoprior._atomic import write_bytes_atomic, write_text_atomic
from tomoprior.phantoms.skull import make_skull
from tomoprior.phantoms.skull.measure import cranial_measures
from tomoprior.phantoms.skull.norms import MEASURES, SEXES, norm_curve

AGES = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
#: Allowed deviation of the mean over seeds from the norm: relative for thickness and
#: volume, absolute (index points) for the cephalic index.
TOLERANCE = {
    "frontal_thickness_mm": ("relative", 0.10),
    "parietal_thickness_mm": ("relative", 0.10),
    "occipital_thickness_mm": ("relative", 0.10),
    "cephalic_index": ("absolute", 2.0),
    "intracranial_volume_ml": ("relative", 0.10),
}
LABELS = {
    "frontal_thickness_mm": "frontal bone thickness (mm)",
    "parietal_thickness_mm": "parietal bone thickness (mm)",
    "occipital_thickness_mm": "occipital bone thickness (mm)",
    "cephalic_index": "cephalic index",
    "intracranial_volume_ml": "intracranial volume (mL)",
}


def deviation(measure: str, mean: float, norm: float) -> tuple[float, bool]:
    """Deviation of ``mean`` from ``norm`` (relative or in points, see :data:`TOLERANCE`) and
    whether it is within the tolerance."""
    kind, tol = TOLERANCE[measure]
    dev = (mean - norm) / norm if kind == "relative" else mean - norm
    return float(dev), bool(abs(dev) <= tol)


def compare(ages, sexes, seeds, n_directions: int = 4000, variant: str = "normal") -> list[dict]:
    """One row per (age, sex, measure): phantom mean and sd over ``seeds``, the norm, the
    deviation and whether it is within :data:`TOLERANCE`."""
    rows = []
    for age in ages:
        for sex in sexes:
            values = {m: [] for m in MEASURES}
            for seed in seeds:
                m = cranial_measures(make_skull(age_years=age, sex=sex, seed=seed, variant=variant), n_directions)
                for k in MEASURES:
                    values[k].append(m[k])
            for k in MEASURES:
                v = np.array(values[k])
                norm = float(norm_curve(k, age, sex))
                dev, ok = deviation(k, float(v.mean()), norm)
                rows.append({"age_years": age, "sex": sex, "measure": k, "mean": float(v.mean()),
                             "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "norm": norm, "deviation": dev,
                             "within_tolerance": ok, "values": v.tolist()})
    return rows


def markdown(rows) -> str:
    """A Markdown table: one line per age and sex, phantom mean +- sd (norm) per measure."""
    head = ["age y", "sex"] + [LABELS[m] for m in MEASURES]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    keyed = {(r["age_years"], r["sex"], r["measure"]): r for r in rows}
    for age, sex in dict.fromkeys((r["age_years"], r["sex"]) for r in rows):
        cells = [f"{age:g}", sex]
        for m in MEASURES:
            r = keyed[(age, sex, m)]
            fmt = ".0f" if m == "intracranial_volume_ml" else (".1f" if m == "cephalic_index" else ".2f")
            flag = "" if r["within_tolerance"] else " **!**"
            cells.append(f"{r['mean']:{fmt}} ± {r['sd']:{fmt}} ({r['norm']:{fmt}}){flag}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows, path: Path) -> None:
    """Phantom mean +- sd (points with bars) over the norm curves (lines, shaded tolerance)."""
    fig, grid = plt.subplots(2, 3, figsize=(12.0, 7.2))
    axes = grid.ravel()
    ages = np.linspace(0.0, max(r["age_years"] for r in rows), 121)
    colours = {"female": "tab:red", "male": "tab:blue"}
    for ax, m in zip(axes, MEASURES):
        kind, tol = TOLERANCE[m]
        for i, sex in enumerate(SEXES):
            norm = norm_curve(m, ages, sex)
            band = norm * tol if kind == "relative" else np.full_like(norm, tol)
            ax.plot(ages, norm, color=colours[sex], lw=1.2, label=f"norm, {sex}")
            ax.fill_between(ages, norm - band, norm + band, color=colours[sex], alpha=0.12, lw=0)
            pts = [r for r in rows if r["measure"] == m and r["sex"] == sex]
            if pts:
                x = np.array([r["age_years"] for r in pts]) + (i - 0.5) * 0.08
                ax.errorbar(x, [r["mean"] for r in pts], yerr=[r["sd"] for r in pts], fmt="o", ms=3.5,
                            color=colours[sex], capsize=2, label=f"phantom, {sex}")
        ax.set_title(LABELS[m], fontsize=10)
        ax.set_xlabel("age (years)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=10, frameon=False,
                    title=f"{len(rows[0]['values'])} seeds per point (mean ± sd);\nshaded: ±10 % (±2 index points)")
    fig.suptitle("Procedural skull (normal) vs the pediatric cranial norms of Porras et al.", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--ages", type=float, nargs="+", default=list(AGES))
    ap.add_argument("--directions", type=int, default=4000)
    ap.add_argument("--replot", action="store_true", help="redraw the figure and table from <out>/skull_norms.json")
    args = ap.parse_args(argv)
    if args.replot:
        rows = json.loads((args.out / "skull_norms.json").read_text())["rows"]
        figure(rows, args.out / "skull_norms.png")
        print(markdown(rows))
        return 0
    t0 = time.perf_counter()
    rows = compare(args.ages, SEXES, range(args.seeds), args.directions)
    elapsed = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    failing = [f"{r['measure']} at {r['age_years']:g} y ({r['sex']}): {r['deviation']:+.3f}"
               for r in rows if not r["within_tolerance"]]
    doc = {"seeds": args.seeds, "ages_years": args.ages, "sexes": list(SEXES), "directions": args.directions,
           "tolerance": {k: {"kind": v[0], "value": v[1]} for k, v in TOLERANCE.items()},
           "seconds": round(elapsed, 1), "all_within_tolerance": not failing, "rows": rows}
    write_text_atomic(args.out / "skull_norms.json", json.dumps(doc, indent=1) + "\n")
    figure(rows, args.out / "skull_norms.png")
    print(markdown(rows))
    print(f"\n{len(rows)} comparisons in {elapsed:.0f} s; outside the tolerance: {len(failing)}")
    for f in failing:
        print("  ", f)
    return 0 if not failing else 1


if __name__ == "__main__":
    raise SystemExit(main())
