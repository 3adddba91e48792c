"""`slimp probe`'s clinical tables: what eval/probe_clinical.py added to the report, printed.

Printing only; every number comes from the report dict (the same as --json writes).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

RANKING = {"auc": "AUC", "pauc_80": "pAUC>80%TPR", "ap": "AP", "ece": "ECE", "brier": "Brier"}
OPERATING = {
    "sensitivity": "Sens",
    "specificity": "Spec",
    "sens_at_spec90": "Sens@Spec90",
    "sens_at_spec95": "Sens@Spec95",
    "spec_at_sens90": "Spec@Sens90",
    "spec_at_sens95": "Spec@Sens95",
}
PAIRED = {"auc": "AUC", "pauc_80": "pAUC>80%TPR", "balanced_accuracy": "BA"}
SUBGROUP = {"auc": "AUC", "sensitivity": "Sens", "specificity": "Spec"}


def with_ci(value, ci) -> str:
    """'0.912 [0.850, 0.960]', '0.912' without an interval, 'n/a' when undefined."""
    if value is None:
        return "n/a"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _rows(report: dict) -> list[dict]:
    return [r for r in report["results"] if r["low_shot"] is None and "n" in r]


def _who(r: dict) -> str:
    return "+".join(r["features"]) + (f" ({r['pseudo']})" if r.get("pseudo") else "")


def print_clinical(out: Console, report: dict, *, bootstrap: int) -> None:
    """The malignant task's metrics, the comparison and the subgroups of a probe report."""
    rows = _rows(report)
    what = (
        f"95% CI over {bootstrap} patient-bootstrap resamples"
        if bootstrap
        else "no intervals (--bootstrap 0)"
    )
    for title, names in (
        ("ranking and calibration", RANKING),
        ("operating points (Sens/Spec: the classifier's own decision)", OPERATING),
    ):
        if not rows or not any(k in rows[0]["metrics"] for k in names):
            continue
        table = Table(title=f"malignant task, {title} ({what})")
        for col in ("method", "features", "n (malignant, patients)", *names.values()):
            table.add_column(col, justify="left" if col in ("method", "features") else "right")
        for r in rows:
            ci = r.get("ci") or {}
            table.add_row(
                r["method"],
                _who(r),
                f"{r['n']} ({r['n_positive']}, {r['n_patients']})",
                *[with_ci(r["metrics"].get(k, {}).get("mean"), ci.get(k)) for k in names],
            )
        out.print(table)
    if report.get("comparison"):
        print_comparison(out, report["comparison"])
    if rows and rows[0].get("subgroups"):
        print_subgroups(out, rows[0])


def print_comparison(out: Console, c: dict) -> None:
    ci = c.get("ci") or {}
    side_ci = c.get("metrics_ci") or {}
    table = Table(
        title=f"does {c['a']} add to {c['b']}? paired, on the same {c['n']} held-out rows "
        f"({c['n_positive']} malignant, {c['n_patients']} patients)",
        caption=f"DeLong p = {'n/a' if c['p_delong'] is None else format(c['p_delong'], '.3g')}"
        f" (delta AUC, seed {c['delong']['seed']}, rows taken as independent)",
    )
    for col in ("metric", c["a"], c["b"], "delta (A - B)"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, name in PAIRED.items():
        table.add_row(
            name,
            with_ci(c["metrics"]["a"][key], side_ci.get("a", {}).get(key)),
            with_ci(c["metrics"]["b"][key], side_ci.get("b", {}).get(key)),
            with_ci(c[f"delta_{key}"], ci.get(f"delta_{key}")),
        )
    out.print(table)


def print_subgroups(out: Console, r: dict) -> None:
    gaps = [
        f"{g['column']} {SUBGROUP[g['metric']]}: {with_ci(g['gap'], g['ci'])} "
        f"({g['best']} vs {g['worst']})"
        for g in r.get("subgroup_gaps", [])
    ]
    table = Table(
        title=f"subgroups, {r['method']} on {_who(r)} (all methods in --json)",
        caption="best - worst group (groups with >= 10 malignant rows): "
        + ("; ".join(gaps) if gaps else "fewer than two such groups per column"),
    )
    for col in ("column", "group", "n", "malignant", *SUBGROUP.values(), "flag"):
        table.add_column(col, justify="left" if col in ("column", "group", "flag") else "right")
    for g in r["subgroups"]:
        ci = g.get("ci") or {}
        table.add_row(
            g["column"],
            g["group"],
            str(g["n"]),
            str(g["n_positive"]),
            *[with_ci(g[k], ci.get(k)) for k in SUBGROUP],
            "< 10 malignant" if g["flagged"] else "",
        )
    out.print(table)
