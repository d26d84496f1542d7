"""The six pipeline steps, one folder each: plain logic (`logic.py`) beside its KFP wrapper."""
