"""medkfp: train medical image classifiers on Kubeflow Pipelines and serve the best on TF Serving."""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml is the one place the version is written; installed metadata carries it.
    __version__ = version("medkfp")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0.0.0"
