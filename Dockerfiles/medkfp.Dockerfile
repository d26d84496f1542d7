# The medkfp image: every pipeline step, the serving-sync sidecar and the built-in model server.
#
#   make image       CPU image, medkfp/medkfp:<version>
#   make image-gpu   GPU variant, medkfp/medkfp:<version>-gpu (--build-arg TF_EXTRA='[and-cuda]': pip's
#                    CUDA wheels, so a node needs only the NVIDIA driver)
#
# BASE_IMAGE must be a Debian-based image with python3 (3.10-3.12) and its venv module; where no registry
# answers, `make container-engine` makes one from Debian's packages (localhost/medkfp-base:bookworm-py3.11).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# pyproject.toml's runtime dependencies as a requirements file: the install layer below is reused
# as long as they (and the constraints) stay the same, whatever else pyproject.toml changes.
FROM ${BASE_IMAGE} AS requirements
ARG TF_EXTRA=""
COPY pyproject.toml Dockerfiles/runtime_requirements.py /src/
RUN python3 /src/runtime_requirements.py /src/pyproject.toml "${TF_EXTRA}" > /src/runtime-requirements.txt

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/venv
# Dependencies first, from the pinned constraints, so a source change rebuilds only the last layers.
COPY requirements/constraints.txt /src/
COPY --from=requirements /src/runtime-requirements.txt /src/
RUN /opt/venv/bin/pip install --quiet -c /src/constraints.txt -r /src/runtime-requirements.txt
COPY pyproject.toml /src/
COPY medkfp /src/medkfp
COPY components /src/components
COPY pipelines /src/pipelines
COPY serving /src/serving
COPY README.md /src/
RUN /opt/venv/bin/pip install --quiet --no-deps /src \
    && /opt/venv/bin/pip uninstall --quiet --yes setuptools wheel 2>/dev/null || true

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
# The repository URL (make image passes git remote origin when there is one).
ARG SOURCE=""
LABEL org.opencontainers.image.title="medkfp" \
      org.opencontainers.image.description="medkfp pipeline steps, serving-sync and model server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 medkfp && useradd --uid 10001 --gid 10001 --home-dir /home/medkfp --create-home medkfp
COPY --from=builder /opt/venv /opt/venv
# Caches go to /tmp, the one writable path under a read-only root file system.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/medkfp
CMD ["medkfp", "--help"]
