"""The end-to-end demo's report folder (`python -m train.report`)."""
