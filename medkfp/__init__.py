"""medkfp: train medical image classifiers on Kubeflow Pipelines and serve the best on TF Serving."""

__version__ = "0.1.0"
