"""Push: select the best candidate and publish it as a new model version."""
