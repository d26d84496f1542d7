"""Train: one candidate (architecture x balancing), exported as a serving SavedModel."""
