"""The KFP pipeline: wiring of the six steps, its defaults and its local runner."""
