"""The predict bench's floor: grpcio's own server around the same model call, and nothing else.

It serves one unary method, FLOOR_METHOD: the request is one encoded image (raw bytes, no
TF Serving protos), the handler calls the SavedModel's serving_default on it exactly as the
bench's in-process baseline does, and the answer is the outputs' raw bytes. There is no
model repository, no request check and no PredictRequest/PredictResponse to read or write.
What it costs over the in-process call is grpcio's Python server and client on this machine:
the least any server built on grpcio can cost, and what `medkfp serve` is measured against
beside the in-process limit.

    .venv/bin/python bench/grpc_floor_server.py EXPORT_DIR PORT
"""

from __future__ import annotations

import os
import sys
from concurrent import futures

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402

from medkfp import vocab  # noqa: E402
from medkfp.serving.server import DEFAULT_MAX_WORKERS  # noqa: E402

FLOOR_SERVICE = "medkfp.bench.Floor"
FLOOR_METHOD = f"/{FLOOR_SERVICE}/Predict"


def serve(export: str, port: int) -> None:
    signature = tf.saved_model.load(export).signatures[vocab.SIGNATURE]

    def predict(request: bytes, context) -> bytes:
        outputs = signature(**{vocab.INPUT_KEY: tf.constant([request])})
        return b"".join(value.numpy().tobytes() for value in outputs.values())

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=DEFAULT_MAX_WORKERS),
        options=[
            ("grpc.max_receive_message_length", vocab.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", vocab.MAX_MESSAGE_BYTES),
        ],
    )
    handler = grpc.unary_unary_rpc_method_handler(predict)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(FLOOR_SERVICE, {"Predict": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
