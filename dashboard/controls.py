"""Plan-settings widgets shared by the Explore, Compare and Export pages.

Why shared: the three pages must describe a plan the same way (tasks, algorithm + hyperparameters
with the paper's defaults shown, granularity, linkage, order, seed), so that the same choice maps to
the same cached engine objects wherever it was made.
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from flexmerge_core.algorithms import HyperParam
from flexmerge_core.planning.linkage import LINKAGES
from flexmerge_core.planning.plan import ORDERS
from dashboard.session import engine_errors, progress_bar
from flexmerge_core.studio import (DEFAULT_ALGORITHM, GRANULARITIES, Explorer, PlanChoice, Studio, algorithm_names,
                                   algorithm_options)


def hyperparameter_input(param: HyperParam, key: str) -> Any:
    """One widget for one declared option, starting at its default (shown in the help text)."""
    help_text = f"{param.help} (default {param.default})".strip()
    if param.choices:
        choices = list(param.choices)
        return st.selectbox(param.name, choices, index=choices.index(param.default), key=key, help=help_text)
    if param.kind is int:
        return int(st.number_input(param.name, value=int(param.default), step=1, key=key, help=help_text,
                                   min_value=None if param.low is None else int(param.low),
                                   max_value=None if param.high is None else int(param.high)))
    return float(st.number_input(param.name, value=float(param.default), key=key, help=help_text, format="%.4g",
                                 min_value=None if param.low is None else float(param.low),
                                 max_value=None if param.high is None else float(param.high)))


def algorithm_input(label: str, key: str, default: str = DEFAULT_ALGORITHM) -> tuple[str, tuple]:
    """Algorithm select box plus its hyperparameters: (name, sorted (option, value) pairs)."""
    names = list(algorithm_names())
    name = st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key)
    options = algorithm_options(name)
    values = {}
    if options:
        with st.expander(f"{name} hyperparameters", expanded=False):
            for param in options:
                values[param.name] = hyperparameter_input(param, key=f"{key}_{name}_{param.name}")
    return name, tuple(sorted(values.items()))


def plan_settings(key: str, task_names: list[str], pick_tasks: bool = True) -> PlanChoice:
    """The full plan settings form (inside the caller's container)."""
    tasks = task_names
    if pick_tasks:
        tasks = st.multiselect("Tasks to merge", task_names, default=task_names, key=f"{key}_tasks",
                               help="A plan is built for the chosen subset (at least 2 tasks).")
    algorithm, hyper = algorithm_input("Merge algorithm", key=f"{key}_algorithm")
    cols = st.columns(4)
    granularity = cols[0].selectbox("Granularity", GRANULARITIES, key=f"{key}_granularity")
    linkage = cols[1].selectbox("Linkage", LINKAGES, key=f"{key}_linkage")
    order = cols[2].selectbox("Order", ORDERS, key=f"{key}_order")
    seed = int(cols[3].number_input("Seed", value=0, step=1, min_value=0, key=f"{key}_seed",
                                    disabled=order != "random", help="Used by the random order only"))
    chosen = tuple(t for t in task_names if t in tasks)
    return PlanChoice(algorithm=algorithm, hyperparameters=hyper, granularity=granularity, linkage=linkage,
                      order=order, seed=seed if order == "random" else 0,
                      tasks=() if len(chosen) == len(task_names) else chosen)


def explorer_from_settings(studio: Studio, key: str) -> Explorer:
    """The settings form in an expander, then the plan for it (built with a progress bar)."""
    with st.expander("Plan settings", expanded=True):
        choice = plan_settings(key, list(studio.zoo.task_names))
    if choice.tasks and len(choice.tasks) < 2:
        st.warning("Pick at least two tasks: merging needs something to merge.")
        st.stop()
    with engine_errors(), progress_bar("Building the merge plan") as bar:
        return studio.explorer(choice, progress=bar)
