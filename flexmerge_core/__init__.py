"""FlexMerge engine: merge M fine-tuned models into a deployment of any size between 1x and Mx.

A plain Python library (no Streamlit inside); the app and the CLI only call it.
"""
