#!/usr/bin/env bash
# Make a container engine answer on this machine: keep Docker or Podman where one works, else install Podman.
#
# Where neither `docker info` nor `podman info` answers, this installs Debian's podman and runc, writes the
# containers.conf that sandboxed machines need, starts `podman system service` for the Docker API, and makes
# a base image (Debian bookworm + Python 3.11) from Debian's packages, for machines that reach no container
# registry. Every step checks first, so running it again changes nothing.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/medkfp-base:bookworm-py3.11}
PODMAN_SOCKET=${PODMAN_SOCKET:-/run/podman/podman.sock}
CONTAINERS_CONF=/etc/containers/containers.conf

say() { printf 'container-engine: %s\n' "$*"; }

docker_answers() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }
podman_answers() { command -v podman >/dev/null 2>&1 && timeout 60 podman info >/dev/null 2>&1; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        say "installing Podman needs root: run 'sudo make container-engine', or install Docker or Podman yourself"
        exit 1
    fi
}

install_podman() {
    need_root
    say "installing podman and runc from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman runc debootstrap >/dev/null
}

# Sandboxes without CAP_SYS_RESOURCE cannot raise RLIMIT_NOFILE (Podman's default), and crun fails on a
# hybrid cgroup layout where runc works.
write_containers_conf() {
    if [ -f "$CONTAINERS_CONF" ] && grep -q 'runtime = "runc"' "$CONTAINERS_CONF"; then
        return
    fi
    say "writing $CONTAINERS_CONF (runc, cgroupfs, fixed ulimits)"
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
}

# The Docker API on Podman's socket: the docker SDK and kfp.local's DockerRunner talk to it.
start_podman_service() {
    if curl -fsS --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1; then
        return
    fi
    say "starting podman system service on $PODMAN_SOCKET"
    mkdir -p "$(dirname "$PODMAN_SOCKET")"
    rm -f "$PODMAN_SOCKET"
    setsid nohup podman system service --time=0 "unix://$PODMAN_SOCKET" >/var/log/podman-service.log 2>&1 &
    for _ in $(seq 1 60); do
        if curl -fsS --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1; then
            return
        fi
        sleep 0.5
    done
    say "podman system service did not answer on $PODMAN_SOCKET; see /var/log/podman-service.log"
    exit 1
}

# The mirror this machine's apt already uses, so the base image comes from the same place.
debian_mirror() {
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
    fi
    printf '%s' "$uri"
}

make_base_image() {
    if podman image exists "$BASE_IMAGE"; then
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || apt-get install -y -qq debootstrap >/dev/null
    local root
    root=$(mktemp -d)
    say "making $BASE_IMAGE from Debian bookworm packages (about a minute)"
    # shellcheck disable=SC2046
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" $(debian_mirror) >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    say "made $BASE_IMAGE"
}

main() {
    if docker_answers && ! podman_answers; then
        say "Docker answers: nothing to do"
        exit 0
    fi
    if ! podman_answers; then
        install_podman
        write_containers_conf
        podman_answers || { say "podman installed but 'podman info' fails: see 'podman info'"; exit 1; }
    fi
    start_podman_service
    make_base_image
    say "Podman answers; Docker API at unix://$PODMAN_SOCKET (export DOCKER_HOST=unix://$PODMAN_SOCKET)"
}

main "$@"
