"""The errors a user can cause and fix, under one base the command line prints as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: a bad path, layout, store, model name, grid or flag.

    Its message names the thing and the fix; `medkfp` prints it as one line
    (`medkfp: error: ...`) with exit status 2. Every other exception is a bug and keeps its
    traceback (shown with -v).
    """


class InvalidInputError(UserError, ValueError):
    """A value the user gave that cannot work (a fraction out of range, an unknown name, ...)."""


class UsageError(InvalidInputError):
    """Command-line flags that do not go together."""


class InvalidModelError(InvalidInputError):
    """A SavedModel that medkfp cannot serve (e.g. no serving_default taking image_bytes)."""
