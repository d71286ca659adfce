#!/usr/bin/env bash
# Smoke test of the container images and docker-compose.yml with a real engine, on one of our machines:
# builds the CPU image, starts Redis and the API with docker-compose, waits for readiness, searches,
# runs a short load test, restarts Redis to see the frames persist, tears everything down and prints
# how long each step took.
#
#   sudo bash ops/smoke_containers.sh          # from anywhere; needs root and `make install` done
#
# Heavy: apt installs, a debootstrap (~1 min), a multi-GB image (torch with its CUDA wheels: PyTorch's
# CPU index cannot be reached from here), a tiny demo model (24 videos, one epoch). Run it when the
# CPUs are free. Settings (environment): SMOKE_DIR (default /tmp/glccl-smoke, wiped at the end),
# SMOKE_KEEP=1 (keep SMOKE_DIR: the engine's image cache makes a rerun skip the torch layer),
# SMOKE_READY_TIMEOUT (seconds to wait for the API, default 600), SMOKE_WHEEL_PORT (the loopback port
# the local wheels are served on during the build, default 18765: fixed, as the base image records it).
#
# What is particular to our machines lives here, never in the Dockerfiles (shared/notes/containers.md):
# - No Docker engine runs: docker.io is installed and dockerd started by hand without a bridge
#   (--bridge=none --iptables=false), so every container runs on the host's network; a compose
#   override file puts each service there, on free loopback ports. Docker, not Podman: Podman 4.3
#   runs healthchecks from systemd timers, which do not exist here, so `service_healthy` would never come.
# - No registry can be pulled from: python:3.11-slim-bookworm and redis:7.4-bookworm (the names the
#   Dockerfile and the compose file use) are tags of one local Debian image made with debootstrap.
# - HTTPS leaves through a proxy whose CA is only in the host's bundle, and torch's wheels lie on the
#   host (/opt/wheels and the local indexes /opt/pypi, /opt/pypi-more). `docker build` cannot mount host
#   folders, so the base image gets the host's CA bundle and a pip.conf that lists those folders, which
#   this script serves over loopback HTTP to a build run on the host's network (--network=host).
set -Eeuo pipefail
shopt -s inherit_errexit  # a failing command inside $(...) fails the step too
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SMOKE_DIR:-/tmp/glccl-smoke}
KEEP=${SMOKE_KEEP:-0}
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-600}
WHEEL_PORT=${SMOKE_WHEEL_PORT:-18765}
PROJECT=glcclsmoke
SOCK=$WORK/docker.sock
COMPOSE_FILES=(-f "$REPO/docker-compose.yml" -f "$WORK/compose.smoke.yml")

STEP_NAMES=()
STEP_SECONDS=()
CURRENT_STEP=""
DOCKERD_PID=""
HTTP_PID=""

log() { printf '[smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs one named step and records its wall time.
step() {
  local name=$1 start=${EPOCHREALTIME/./}
  shift
  CURRENT_STEP=$name
  log "== $name"
  "$@"
  STEP_NAMES+=("$name")
  STEP_SECONDS+=("$(((${EPOCHREALTIME/./} - start) / 1000))")
  CURRENT_STEP=""
}

report() {
  local i ms
  printf '\n%-34s %10s\n' "step" "seconds"
  for i in "${!STEP_NAMES[@]}"; do
    ms=${STEP_SECONDS[$i]}
    printf '%-34s %8d.%d\n' "${STEP_NAMES[$i]}" $((ms / 1000)) $((ms % 1000 / 100))
  done
  if [[ -n $CURRENT_STEP ]]; then
    printf '%-34s %10s\n' "$CURRENT_STEP" "FAILED"
  fi
}

compose() { DOCKER_HOST="unix://$SOCK" COMPOSE_PROJECT_NAME=$PROJECT docker-compose "${COMPOSE_FILES[@]}" "$@"; }
docker_() { DOCKER_HOST="unix://$SOCK" docker "$@"; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

teardown() {
  local rc=$?
  set +e
  if [[ -S $SOCK ]]; then
    log "== teardown"
    compose --profile loadtest down -v --remove-orphans >&2
  fi
  if [[ -n $DOCKERD_PID ]]; then
    kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null
  fi
  if [[ -n $HTTP_PID ]]; then
    kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
  fi
  # A dockerd that died uncleanly can leave overlay and shm mounts under the work folder.
  awk -v root="$WORK/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
  if [[ $KEEP != 1 ]]; then
    rm -rf "$WORK"
  fi
  report
  if [[ $rc -eq 0 ]]; then log "smoke test passed"; else log "smoke test FAILED (exit $rc)"; fi
  exit "$rc"
}

# ----------------------------------------------------------------------------- steps

install_tools() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io containerd runc docker-compose debootstrap curl >/dev/null
}

start_engine() {
  mkdir -p "$WORK/docker" "$WORK/exec"
  dockerd --data-root "$WORK/docker" --exec-root "$WORK/exec" -H "unix://$SOCK" --pidfile "$WORK/docker.pid" \
    --bridge=none --iptables=false --ip6tables=false >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for i in $(seq 60); do
    if docker_ info >/dev/null 2>&1; then return 0; fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  tail -20 "$WORK/dockerd.log" >&2
  die "dockerd did not start (log: $WORK/dockerd.log)"
}

serve_wheels() {
  # The host's local package folders, behind one loopback HTTP server for the build.
  mkdir -p "$WORK/wheelroot"
  local dir
  for dir in wheels pypi pypi-more; do
    if [[ -d /opt/$dir ]]; then ln -sfn "/opt/$dir" "$WORK/wheelroot/$dir"; fi
  done
  python3 -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WORK/wheelroot" >"$WORK/http.log" 2>&1 &
  HTTP_PID=$!
  local i
  for i in $(seq 20); do
    if curl -fsS "http://127.0.0.1:$WHEEL_PORT/" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "the local wheel server did not start (log: $WORK/http.log)"
}

base_images() {
  if docker_ image inspect python:3.11-slim-bookworm >/dev/null 2>&1; then
    log "base image kept from an earlier run"
    return 0
  fi
  local mirror rootfs=$WORK/rootfs local_index=http://127.0.0.1:$WHEEL_PORT
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  rm -rf "$rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,passwd,redis-server \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # Local folders first, so that a wheel found both there and on PyPI comes from the disk.
  cat >"$rootfs/etc/pip.conf" <<EOF
[global]
cert = /etc/ssl/certs/ca-certificates.crt
index-url = $local_index/pypi/simple
extra-index-url = $local_index/pypi-more/simple https://pypi.org/simple
find-links = $local_index/wheels/
EOF
  tar -C "$rootfs" -c . | docker_ import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - localhost/debian-python:bookworm >/dev/null
  docker_ tag localhost/debian-python:bookworm python:3.11-slim-bookworm
  docker_ tag localhost/debian-python:bookworm redis:7.4-bookworm
  rm -rf "$rootfs"
}

build_image() {
  # torch from the local copy of its index (TORCH_INDEX_URL), everything else as pip.conf says.
  docker_ build --network=host -f "$REPO/docker/Dockerfile.cpu" -t glccl:cpu \
    --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$WHEEL_PORT/pypi-more/simple" "$REPO"
  docker_ image ls glccl:cpu
}

prepare_data() {
  # A tiny demo (checkpoint, features, local index) made on the host, owned by the image's user.
  [[ -x $REPO/.venv/bin/glccl ]] || die "no $REPO/.venv/bin/glccl: run 'make install' first"
  "$REPO/.venv/bin/glccl" demo --dir "$WORK/demo" --videos 24 --epochs 1 --no-serve
  mkdir -p "$WORK/results"
  chown -R 10001:10001 "$WORK/demo" "$WORK/results"
}

write_override() {
  REDIS_PORT=$(free_port)
  API_PORT=$(free_port)
  cat >"$WORK/compose.smoke.yml" <<EOF
# Written by ops/smoke_containers.sh: this machine's engine has no bridge network.
services:
  redis:
    network_mode: host
    command: ["redis-server", "--appendonly", "yes", "--dir", "/data", "--bind", "127.0.0.1", "--port", "$REDIS_PORT"]
    healthcheck:
      test: ["CMD", "redis-cli", "-p", "$REDIS_PORT", "ping"]
  api:
    network_mode: host
    environment:
      GLCCL_HOST: 127.0.0.1
      GLCCL_PORT: "$API_PORT"
  loadtest:
    network_mode: host
EOF
  export GLCCL_DATA=$WORK/demo LOADTEST_RESULTS=$WORK/results
  export GLCCL_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0 LOADTEST_URL=http://127.0.0.1:$API_PORT
  compose --profile loadtest --profile gpu config -q
}

wait_healthy() {
  local service=$1 timeout=$2 id status i
  id=$(compose ps -q "$service")
  [[ -n $id ]] || die "no container for $service"
  for i in $(seq "$timeout"); do
    status=$(docker_ inspect -f '{{.State.Health.Status}}' "$id")
    if [[ $status == healthy ]]; then return 0; fi
    if [[ $(docker_ inspect -f '{{.State.Running}}' "$id") != true ]]; then break; fi
    sleep 1
  done
  compose logs --tail 40 "$service" >&2
  die "$service is not healthy (status: ${status:-unknown})"
}

start_redis() {
  compose up -d redis
  wait_healthy redis 60
}

index_in_redis() {
  # glccl of the image itself, as the container user, writing into the mounted data folder.
  compose run --rm --no-deps --entrypoint glccl api index build --features /data/features \
    --out /data/index-redis --store redis --redis-url "$GLCCL_REDIS_URL" --no-progress
}

start_api() {
  export GLCCL_INDEX=/data/index-redis
  compose up -d api
  wait_healthy api "$READY_TIMEOUT"
  curl -fsS "http://127.0.0.1:$API_PORT/readyz"
  echo
}

search_once() {
  local out
  out=$(curl -fsS "http://127.0.0.1:$API_PORT/search" -H 'content-type: application/json' \
    -d '{"query": "a red circle moves left", "top_k": 3}')
  python3 -c 'import json, sys; r = json.loads(sys.argv[1])["results"]; assert len(r) == 3, r; print(r[0]["video_id"])' \
    "$out"
}

search() {
  FIRST_HIT=$(search_once)
  log "top result: $FIRST_HIT"
}

load_test() {
  export LOADTEST_RATE=10 LOADTEST_DURATION=5
  compose --profile loadtest run --rm loadtest >"$WORK/loadtest.out"
  python3 - "$WORK/results/loadtest.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r[k] for k in ("offered_rate", "achieved_rate", "status_counts", "errors", "latency_ms")})
assert r["status_counts"].get("200") == r["requests"], "not every request answered 200"
EOF
  [[ -s $WORK/results/loadtest.png ]] || die "no load test plot"
}

redis_persists() {
  # appendonly: Redis comes back with the frames, and the API answers the same without a restart.
  compose restart redis
  wait_healthy redis 60
  local hit i
  # The API's pooled connections to the old Redis process are dead: give it a moment to reconnect.
  for i in $(seq 30); do
    if curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 1
  done
  hit=$(search_once)
  [[ $hit == "$FIRST_HIT" ]] || die "after a Redis restart the top result changed: $FIRST_HIT -> $hit"
}

# ----------------------------------------------------------------------------- main

[[ $EUID -eq 0 ]] || die "run as root: it installs packages and starts dockerd"
[[ $WORK == /*/* ]] || die "SMOKE_DIR must be an absolute folder below / (it is wiped at the end): $WORK"
python3 -c "import socket; socket.create_server(('127.0.0.1', $WHEEL_PORT)).close()" 2>/dev/null ||
  die "port $WHEEL_PORT is taken: set SMOKE_WHEEL_PORT"
[[ ! -e $SOCK ]] || die "$SOCK exists: another smoke run, or a stale one (remove $WORK)"
mkdir -p "$WORK"
trap teardown EXIT
trap 'die "interrupted"' INT TERM

step "install engine and tools" install_tools
step "start dockerd" start_engine
step "serve local wheels" serve_wheels
step "base images (debootstrap)" base_images
step "build glccl:cpu" build_image
step "demo data on the host" prepare_data
step "compose override and config" write_override
step "redis up and healthy" start_redis
step "index build into redis" index_in_redis
step "api up and ready" start_api
step "search" search
step "load test (10/s for 5 s)" load_test
step "redis restart keeps frames" redis_persists
