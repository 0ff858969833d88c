"""FlexMerge engine: merge M fine-tuned models into a deployment of any size between 1x and Mx.

A plain Python library (no Streamlit inside); the app and the CLI only call it.
Nothing in it reaches for the network: the Hugging Face libraries that open_clip may call into are
switched to offline mode here, before any of them is imported, so a name that would need a download
fails at once with a message naming the missing file instead of retrying a network for minutes.
"""
import os

for _variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_variable] = "1"
