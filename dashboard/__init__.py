"""The Streamlit dashboard's helpers (charts, shared widgets, session state), used by app.py and pages/.

Kept outside pages/ because Streamlit turns every .py file there into a page, and outside
flexmerge_core because the engine never imports a UI library.
"""
