"""Pipeline defaults and the cluster settings the compiled YAML carries."""

from medkfp import vocab

PIPELINE_NAME = "medkfp-train-and-push"
PIPELINE_DESCRIPTION = (
    "Ingest, preprocess, balance, train a grid of candidates (GPU), evaluate, and push the "
    "best model per dataset to the TF Serving model repository."
)

DEFAULT_GRID = "quick"
DEFAULT_EPOCHS = 10
DEFAULT_IMAGE_SIZE = 64
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0
DEFAULT_MIN_DELTA = vocab.DEFAULT_MIN_DELTA
# Candidates trained at once; each asks for its own GPU on the cluster.
TRAIN_PARALLELISM = 3

# Cluster settings, ignored by kfp.local.
S3_SECRET = "medkfp-s3"
S3_SECRET_ENV = {
    "endpoint": "AWS_ENDPOINT_URL_S3",
    "access-key": "AWS_ACCESS_KEY_ID",
    "secret-key": "AWS_SECRET_ACCESS_KEY",
}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_COUNT = 1
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TRAIN_RETRIES = 2
