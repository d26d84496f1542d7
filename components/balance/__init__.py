"""Balance: none / undersample / oversample the train split at manifest level."""
