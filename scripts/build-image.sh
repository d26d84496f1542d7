#!/usr/bin/env bash
# Build the medkfp image with whichever engine answers: docker where its daemon does, else podman.
#   scripts/build-image.sh cpu|gpu
# The tag comes from pyproject.toml's version; BASE_IMAGE defaults to the local Debian base image where
# `make container-engine` made one (machines that reach no registry), else python:3.11-slim-bookworm.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:-cpu}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image=${IMAGE:-medkfp/medkfp:$version}
local_base=localhost/medkfp-base:bookworm-py3.11

if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1 && ! docker info 2>/dev/null | grep -qi podman; then
    engine=docker
elif command -v podman >/dev/null 2>&1 && timeout 60 podman info >/dev/null 2>&1; then
    engine=podman
else
    echo "build-image: no container engine answers: run 'make container-engine', or install Docker or Podman" >&2
    exit 1
fi

if [ -z "${BASE_IMAGE:-}" ]; then
    if "$engine" image inspect "$local_base" >/dev/null 2>&1; then
        BASE_IMAGE=$local_base
    else
        BASE_IMAGE=python:3.11-slim-bookworm
    fi
fi

args=(--file Dockerfiles/medkfp.Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$version"
      --network host)
source_url=$(git config --get remote.origin.url 2>/dev/null || true)
[ -n "$source_url" ] && args+=(--build-arg "SOURCE=$source_url")
if [ "$variant" = gpu ]; then
    image=${IMAGE:-$image-gpu}
    args+=(--build-arg "TF_EXTRA=[and-cuda]")
fi
# A sandbox that re-signs TLS needs its CA bundle inside the build; podman can mount it for the build only,
# so it never lands in a layer. An ordinary machine needs neither this nor --network host.
bundle=/etc/ssl/certs/ca-certificates.crt
if [ "$engine" = podman ] && [ -f "$bundle" ]; then
    args+=(--volume "$bundle:$bundle:ro")
fi
echo "build-image: $engine build $image (base $BASE_IMAGE)"
"$engine" build "${args[@]}" --tag "$image" .
