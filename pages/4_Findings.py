"""Findings: the paper's five findings checked on the open zoo, each reproduced / not reproduced /
inconclusive, with the numbers, 95% intervals and paired tests behind the verdict (engine:
flexmerge_core.findings; the same document as `python -m flexmerge_core findings --json`)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts
from dashboard.metric_axis import axis_for
from dashboard.rankings import highlight_changes, ranking_table
from dashboard.session import engine_errors, open_studio, progress_bar, requested
from flexmerge_core.findings import DEFAULT_ALGORITHMS
from flexmerge_core.studio import algorithm_names

# a verdict is a result, not an error: "not reproduced" is a warning, st.error stays for failures
VERDICT_BOXES = {"reproduced": st.success, "not reproduced": st.warning, "inconclusive": st.info}

st.title("The paper's findings on this zoo")
studio = open_studio()
names = list(algorithm_names())
chosen = st.multiselect("Algorithms whose rankings are compared", names,
                        default=[n for n in DEFAULT_ALGORITHMS if n in names], key="findings_algorithms")
if len(chosen) < 2:
    st.info("Pick at least two algorithms.")
    st.stop()
if not requested("Reproduce the findings", "findings_run",
                 "Builds and evaluates about a dozen plans (algorithms, baselines, merge orders, linkages); "
                 "everything is cached, so a second run is instant."):
    st.stop()
with engine_errors(), progress_bar("Reproducing the findings") as bar:
    doc = studio.findings(tuple(chosen), progress=bar)

axis = axis_for([doc])
scale = 100 if axis.percent and not axis.normalized else 1   # accuracy: fractions shown in % and points
unit = " points" if scale == 100 else ""


def value(v: float) -> str:
    return f"{scale * v:.2f}" + ("%" if scale == 100 else "")


def interval(low: float, high: float) -> str:
    return f"[{scale * low:.2f}, {scale * high:.2f}]"


def point_text(p: dict) -> str:
    return f"{value(p['avg_accuracy'])} {interval(p['ci_low'], p['ci_high'])}"


st.caption(f"Zoo {doc['zoo']} ({len(doc['tasks'])} tasks). Every number comes with its 95% interval; a verdict "
           f"rests on paired tests on the same held-out examples at the {doc['alpha']:g} level "
           "(McNemar per task for accuracy, combined over tasks; Holm-adjusted across the sizes of a finding).")


def verdict(finding: dict, letter: str) -> None:
    st.subheader(f"({letter}) {finding['title']}")
    VERDICT_BOXES[finding["verdict"]](f"**{finding['verdict'].upper()}**: {finding['claim']}")
    st.markdown(finding["summary"])


def gain(finding: dict) -> None:
    small, large = finding["points"]
    cols = st.columns(3)
    cols[0].metric(f"{small['size']:.2f}x", value(small["avg_accuracy"]),
                   help=f"95% interval {interval(small['ci_low'], small['ci_high'])}")
    cols[1].metric(f"{large['size']:.2f}x", value(large["avg_accuracy"]),
                   help=f"95% interval {interval(large['ci_low'], large['ci_high'])}")
    cols[2].metric("Gain", f"{scale * finding['gain']:+.2f}{unit}",
                   help=f"95% paired interval {interval(*finding['gain_ci'])}, p = {finding['p_value']:.2g}")


def rankings(finding: dict) -> None:
    steps = finding["rankings"]
    budgets = [s["size_budget"] for s in steps]
    values = {a: {s["size_budget"]: s["points"][a]["avg_accuracy"] for s in steps if a in s["points"]}
              for a in finding["algorithms"]}
    table = ranking_table(values, {s["size_budget"]: s["groups"] for s in steps}, budgets,
                          fmt=value)
    st.dataframe(highlight_changes(table), hide_index=True, key="findings_rankings")


def versus(finding: dict) -> None:
    reference = finding["reference"]
    series = {a["label"]: [(c["size_budget"], scale * c["difference"], scale * c["ci_low"], scale * c["ci_high"],
                            c["ahead"] != "tie") for c in a["comparisons"]] for a in finding["alternatives"]}
    st.plotly_chart(charts.difference_figure(series, title=f"{reference} minus each alternative",
                                             y_title=f"difference ({unit.strip() + ', ' if unit else ''}95% interval)"),
                    key=f"chart_findings_{finding['id']}")
    rows = [{"alternative": a["label"], "size": f"{c['size_budget']:g}x", reference: point_text(c["reference"]),
             "alternative average": point_text(c["alternative"]),
             "difference": f"{scale * c['difference']:+.2f} {interval(c['ci_low'], c['ci_high'])}",
             "p": f"{c['p_value']:.2g}", "Holm p": f"{c['p_holm']:.2g}", "significantly ahead": c["ahead"]}
            for a in finding["alternatives"] for c in a["comparisons"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"findings_table_{finding['id']}")
    st.caption(f"Filled markers: significant after Holm's correction over the {finding['tests']} tests of this "
               "finding. Identical deployments (every example scored the same) are exact ties, not tests.")


SHOW = {"gain_1x_to_2x": gain, "rank_changes": rankings}
for letter, finding in zip("abcde", doc["findings"]):
    verdict(finding, letter)
    SHOW.get(finding["id"], versus)(finding)
