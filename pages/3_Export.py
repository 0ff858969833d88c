"""Export: pick an algorithm and a size, see what will be written, download it."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from dashboard.controls import explorer_from_settings
from dashboard.session import current_zoo_spec, engine_errors, open_studio
from flexmerge_core.deployment.export import head_path, recipe_path

st.title("Export a deployment")
studio = open_studio()

explorer = explorer_from_settings(studio, "export")
choice = explorer.choice
plan = explorer.plan
budget = st.number_input("Size budget (x one model)", min_value=0.01, max_value=float(plan.max_size),
                         value=float(min(2.0, plan.max_size)), step=0.05, format="%.2f", key="export_size")
view = explorer.partition(budget)
STORED_AS = {"the zoo's dtypes": None, "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
dtype = STORED_AS[st.selectbox("Stored as", list(STORED_AS), key="export_dtype",
                               help="Every floating tensor of the file is written in this dtype")]

st.subheader("What will be written")
cols = st.columns(3)
cols[0].metric("Size achieved", f"{view.size:.3f}x")
cols[1].metric("Stored parameters", f"{explorer.stored_megabytes(budget, dtype):.2f} MB",
               help="Exactly the file's merged-parameter tensors (masks and rescalers included); heads and "
                    "per-task unmerged tensors come on top")
cols[2].metric("Tasks served", len(explorer.task_names))
if not view.budget_met:
    st.warning(f"A budget of {budget:.2f}x cannot be met: the smallest achievable size with "
               f"{explorer.algorithm.name} is {plan.min_size:.3f}x, which is what will be written.")
st.write("Tasks: " + ", ".join(explorer.task_names))
st.caption("One .safetensors file holds every stored tensor once, the per-task routing, heads and the recipe; "
           "a per-task checkpoint is a plain state dict of that task's encoder (its head beside it).")
with st.expander("Recipe (reproduces the export)", expanded=False):
    st.json(explorer.recipe(budget))


def download(label: str, path: Path, key: str, mime: str = "application/octet-stream") -> None:
    st.download_button(label, data=path.read_bytes(), file_name=path.name, mime=mime, key=key)


def written(task: str | None) -> Path | None:
    """The export for this plan, size and task once the user asked for it (kept across reruns)."""
    store = st.session_state.setdefault("exports", {})
    key = (choice, view.num_events, task, dtype)
    if key not in store:
        return None
    return store[key]


def write(task: str | None) -> None:
    with engine_errors(), st.spinner("Merging and writing"):
        path = explorer.export_file(budget, task=task, zoo_spec=current_zoo_spec(), dtype=dtype)
    st.session_state.setdefault("exports", {})[(choice, view.num_events, task, dtype)] = path


left, right = st.columns(2)
with left:
    st.markdown("**The whole deployment**")
    if st.button("Write the deployment", key="export_write_deployment"):
        write(None)
    path = written(None)
    if path is not None:
        st.caption(f"Written to {path} ({path.stat().st_size / 1e6:.2f} MB)")
        download("Download the deployment (.safetensors)", path, "download_deployment")
        download("Download the recipe (.json)", recipe_path(path), "download_recipe", mime="application/json")
with right:
    st.markdown("**One task's model**")
    task = st.selectbox("Task", explorer.task_names, key="export_task")
    if st.button("Write this task's checkpoint", key="export_write_task"):
        write(task)
    path = written(task)
    if path is not None:
        st.caption(f"Written to {path} ({path.stat().st_size / 1e6:.2f} MB)")
        download(f"Download {task}'s encoder (.safetensors)", path, "download_task")
        if head_path(path).exists():
            download(f"Download {task}'s head (.safetensors)", head_path(path), "download_task_head")
        recipe = json.loads(recipe_path(path).read_text())
        st.caption(f"Recipe: {recipe['algorithm']} at {recipe['size']:.3f}x, task {recipe['task']}")
