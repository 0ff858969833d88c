"""FlexMerge Studio dashboard (Streamlit entry). The full dashboard lands with the dashboard issue."""
import streamlit as st

st.set_page_config(page_title="FlexMerge Studio", layout="wide")
st.title("FlexMerge Studio")
st.info("The dashboard is coming soon. The engine is usable from `python -m flexmerge_core`.")
