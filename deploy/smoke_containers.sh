#!/usr/bin/env bash
# Smoke test of the container images and docker-compose.yml with a real engine, on one of our machines:
# builds the CPU image, starts Redis and the API with docker-compose, waits for readiness, searches,
# runs a short load test, restarts Redis to see the frames persist, tears everything down and prints
# how long each step took.
#
#   sudo bash deploy/smoke_containers.sh          # from anywhere; needs root and `make install` done
#
# Heavy: apt installs, a debootstrap (~3 min), a 6.4 GB image (torch with its CUDA wheels: PyTorch's
# CPU index cannot be reached from here) and about 22 GB free disk under SMOKE_DIR while it builds, a
# tiny demo model (24 videos, one epoch); about 15 minutes on 2 shared cores. Run it when the CPUs
# are free. Settings (environment): SMOKE_DIR (default /tmp/glccl-smoke, wiped at the end),
# SMOKE_KEEP=1 (keep SMOKE_DIR: the engine's image cache makes a rerun skip the torch layer),
# SMOKE_READY_TIMEOUT (seconds to wait for the API, default 600), SMOKE_WHEEL_PORT (the loopback port
# the local wheels are served on during the build, default 18765: fixed, as the base image records it),
# SMOKE_MIN_FREE_GB (free disk required at the start, default 22; 0 skips the check).
# It prints each step's time as it ends, and a summary (steps, the image, the search's answer, the
# load test's figures); a failing step ends it with one line naming the step, after the teardown.
#
# What is particular to our machines lives here, never in the Dockerfiles (shared/notes/containers.md):
# - No Docker engine runs: docker.io is installed and dockerd started by hand, on its own socket and
#   folders, without the default docker0 bridge or iptables rules (--bridge=none --iptables=false).
#   docker-compose.yml runs unchanged: compose makes its own bridge network for the project, on which
#   the services find each other by name (Docker's embedded DNS), and the API's published port is
#   forwarded by docker-proxy (a free port on the host). Docker, not Podman: Podman 4.3 runs
#   healthchecks from systemd timers, which do not exist here, so `service_healthy` would never come.
# - No registry can be pulled from: python:3.11-slim-bookworm and redis:7.4-bookworm (the names the
#   Dockerfile and the compose file use) are made from one local Debian image made with debootstrap.
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
MIN_FREE_GB=${SMOKE_MIN_FREE_GB:-22}
PROJECT=glcclsmoke
SOCK=$WORK/docker.sock
COMPOSE_FILES=(-f "$REPO/docker-compose.yml")  # the users' file, unchanged

STEP_NAMES=()
STEP_SECONDS=()
CURRENT_STEP=""
STEP_START=0
RUN_START=${EPOCHREALTIME/./}
BUILD_SUMMARY=""
SEARCH_SUMMARY=""
LOAD_SUMMARY=""
DOCKERD_PID=""
HTTP_PID=""

log() { printf '[smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

seconds() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }  # milliseconds -> "12.3"

# Runs one named step, prints and records its wall time.
step() {
  local name=$1 start=${EPOCHREALTIME/./} ms
  shift
  CURRENT_STEP=$name
  STEP_START=$start
  log "== $name"
  "$@"
  ms=$(((${EPOCHREALTIME/./} - start) / 1000))
  STEP_NAMES+=("$name")
  STEP_SECONDS+=("$ms")
  CURRENT_STEP=""
  log "-- $name: $(seconds "$ms") s"
}

# The final summary: every step with its time, then what the search and the load test answered.
report() {
  local i total=0 now=${EPOCHREALTIME/./}
  printf '\n==================== smoke test summary\n'
  printf '%-34s %10s\n' "step" "seconds"
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-34s %10s\n' "${STEP_NAMES[$i]}" "$(seconds "${STEP_SECONDS[$i]}")"
    total=$((total + STEP_SECONDS[i]))
  done
  if [[ -n $CURRENT_STEP ]]; then
    printf '%-34s %10s\n' "$CURRENT_STEP" "FAILED after $(seconds $(((now - STEP_START) / 1000)))"
  fi
  printf '%-34s %10s\n' "all steps" "$(seconds "$total")"
  printf '%-34s %10s\n' "whole run (teardown included)" "$(seconds $(((now - RUN_START) / 1000)))"
  printf '\n'
  if [[ -n $BUILD_SUMMARY ]]; then printf 'build: %s\n' "$BUILD_SUMMARY"; fi
  if [[ -n $SEARCH_SUMMARY ]]; then printf 'search: %s\n' "$SEARCH_SUMMARY"; fi
  if [[ -n $LOAD_SUMMARY ]]; then printf 'load test: %s\n' "$LOAD_SUMMARY"; fi
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
  if [[ $rc -eq 0 ]]; then
    log "smoke test passed"
  elif [[ -n $CURRENT_STEP ]]; then
    log "smoke test FAILED in step '$CURRENT_STEP' (exit $rc)"
  else
    log "smoke test FAILED (exit $rc)"
  fi
  exit "$rc"
}

# ----------------------------------------------------------------------------- steps

install_tools() {
  if command -v dockerd containerd runc docker-compose debootstrap curl >/dev/null; then
    log "dockerd, docker-compose and debootstrap already installed"
    return 0
  fi
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
  # The host's local package indexes (torch==2.14.1 and its CUDA libraries are in /opt/pypi-more;
  # /opt/wheels holds only an older torch), behind one loopback HTTP server for the build.
  mkdir -p "$WORK/wheelroot"
  local dir
  for dir in pypi pypi-more; do
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
  # PyPI first, the local indexes after it: when one wheel (same name, version and tags) is found in
  # several indexes, the resolver of the image's pip (23.0, Debian's) takes the one listed last, so a
  # wheel on both comes from the disk, and PyPI only gives what the disk lacks (e.g. cuda-bindings).
  # The build step checks in the server's log that torch did come from here.
  cat >"$rootfs/etc/pip.conf" <<EOF
[global]
cert = /etc/ssl/certs/ca-certificates.crt
index-url = https://pypi.org/simple
extra-index-url = $local_index/pypi/simple $local_index/pypi-more/simple
EOF
  tar -C "$rootfs" -c . | docker_ import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - localhost/debian-python:bookworm >/dev/null
  docker_ tag localhost/debian-python:bookworm python:3.11-slim-bookworm
  rm -rf "$rootfs"
}

redis_image() {
  # The stand-in for redis:7.4-bookworm: Debian's redis-server (7.0) on the same base. The official
  # image is built with protected mode off (the API reaches it from another container, without a
  # password); Debian's keeps it on, so a wrapper first on PATH turns it off the same way.
  mkdir -p "$WORK/redis-image"
  printf '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n' >"$WORK/redis-image/redis-server"
  chmod 755 "$WORK/redis-image/redis-server"
  printf 'FROM localhost/debian-python:bookworm\nCOPY redis-server /usr/local/bin/redis-server\n' \
    >"$WORK/redis-image/Dockerfile"
  docker_ build -q -t redis:7.4-bookworm "$WORK/redis-image"
}

build_image() {
  # PyPI's torch (its CPU index cannot be reached from here), as pip.conf sets the indexes: PyPI plus
  # the local ones. On the host's network, to reach the wheel server on loopback.
  docker_ build --network=host -f "$REPO/docker/Dockerfile.cpu" -t glccl:cpu \
    --build-arg "TORCH_INDEX_URL=https://pypi.org/simple" "$REPO"
  docker_ image ls glccl:cpu
  local served size
  served=$(python3 - "$WORK/http.log" /opt <<'EOF'
import os, re, sys
names = sorted(set(re.findall(r'"GET /[^ ]*/files/([^ #?]+) HTTP', open(sys.argv[1]).read())))
paths = [os.path.join(sys.argv[2], d, "files", n) for n in names for d in ("pypi", "pypi-more")]
size = sum(os.path.getsize(p) for p in paths if os.path.exists(p))
print(f"{len(names)} wheels ({size / 2**30:.2f} GiB) came from the host's local indexes: {' '.join(names)}")
EOF
  )
  log "$served"
  if grep -q '"GET /pypi-more/simple/torch/' "$WORK/http.log"; then
    [[ $served == *" torch-2.14.1-"* ]] || die "pip took torch from PyPI, not from the local index (log: $WORK/http.log)"
  else
    served="the dependency layer came from the build cache"
  fi
  size=$(docker_ image inspect -f '{{.Size}}' glccl:cpu | awk '{ printf "%.2f GB", $1 / 1e9 }')
  BUILD_SUMMARY="image glccl:cpu, $size; $served"
  if [[ $KEEP != 1 ]]; then
    docker_ image prune -f >/dev/null  # the builder stage's image (~6 GB), not needed to run
  fi
}

prepare_data() {
  # A tiny demo (checkpoint, features, local index) made on the host, owned by the image's user.
  [[ -x $REPO/.venv/bin/glccl ]] || die "no $REPO/.venv/bin/glccl: run 'make install' first"
  "$REPO/.venv/bin/glccl" demo --dir "$WORK/demo" --videos 24 --epochs 1 --no-serve
  mkdir -p "$WORK/results"
  chown -R 10001:10001 "$WORK/demo" "$WORK/results"
}

compose_settings() {
  # The compose file's own variables: this run's data folder and results folder, a free loopback
  # port for the API (8000 may be taken on a shared machine). Redis and the load test are reached by
  # service name on the project's network, as in the file's defaults.
  API_PORT=$(free_port)
  export GLCCL_DATA=$WORK/demo LOADTEST_RESULTS=$WORK/results GLCCL_PUBLISH_PORT=127.0.0.1:$API_PORT
  export GLCCL_INDEX=/data/index-redis LOADTEST_RATE=10 LOADTEST_DURATION=5
  log "API published on 127.0.0.1:$API_PORT"
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
  compose run -T --rm --no-deps --entrypoint glccl api index build --features /data/features \
    --out /data/index-redis --store redis --redis-url redis://redis:6379/0 --no-progress
}

start_api() {
  compose up -d api
  wait_healthy api "$READY_TIMEOUT"
  curl -fsS "http://127.0.0.1:$API_PORT/readyz"
  echo
}

QUERY="a red circle moves left"

# One search of the API (top 3); prints its answer, the JSON.
search_json() {
  curl -fsS --max-time 30 "http://127.0.0.1:$API_PORT/search" -H 'content-type: application/json' \
    -d "{\"query\": \"$QUERY\", \"top_k\": 3}"
}

# The id of the top result (three results required).
top_hit() {
  python3 -c 'import json, sys; r = json.loads(sys.argv[1])["results"]; assert len(r) == 3, r; print(r[0]["video_id"])' "$1"
}

search() {
  local out start=${EPOCHREALTIME/./}
  out=$(search_json)
  FIRST_HIT=$(top_hit "$out")
  echo "$out"
  SEARCH_SUMMARY=$(python3 - "$out" "$(((${EPOCHREALTIME/./} - start) / 1000))" <<'EOF'
import json, sys
answer, round_trip = json.loads(sys.argv[1]), sys.argv[2]
hits = ", ".join(f"{r['video_id']} ({r['score']:.3f})" for r in answer["results"])
print(f"{answer['query']!r} -> {hits}; server {answer['timing_ms']['total']:.1f} ms, round trip {round_trip} ms")
EOF
  )
  log "search: $SEARCH_SUMMARY"
}

load_test() {
  compose --profile loadtest run -T --rm loadtest | tee "$WORK/loadtest.out"
  LOAD_SUMMARY=$(python3 - "$WORK/results/loadtest.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_ms"]
print(
    f"{r['requests']} requests offered at {r['offered_rate']}/s, sent at {r['sent_rate']}/s, "
    f"answered at {r['achieved_rate']}/s; status {r['status_counts']}; errors {r['errors']}; "
    f"latency ms p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']}"
)
EOF
  )
  log "load test: $LOAD_SUMMARY"
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r["status_counts"].get("200") != r["requests"])' \
    "$WORK/results/loadtest.json" || die "not every load test request answered 200"
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
  hit=$(top_hit "$(search_json)")
  [[ $hit == "$FIRST_HIT" ]] || die "after a Redis restart the top result changed: $FIRST_HIT -> $hit"
}

# ----------------------------------------------------------------------------- main

[[ $EUID -eq 0 ]] || die "run as root: it installs packages and starts dockerd"
[[ $WORK == /*/* ]] || die "SMOKE_DIR must be an absolute folder below / (it is wiped at the end): $WORK"
python3 -c "import socket; socket.create_server(('127.0.0.1', $WHEEL_PORT)).close()" 2>/dev/null ||
  die "port $WHEEL_PORT is taken: set SMOKE_WHEEL_PORT"
[[ ! -e $SOCK ]] || die "$SOCK exists: another smoke run, or a stale one (remove $WORK)"
mkdir -p "$WORK"
# The image is ~6.5 GB (PyPI's torch brings its CUDA libraries), and the classic builder holds the
# builder stage, the copy being made and its committed layer at once.
FREE_GB=$(df -Pk "$WORK" | awk 'NR == 2 { print int($4 / 1024 / 1024) }')
((FREE_GB >= MIN_FREE_GB)) || die "$WORK has $FREE_GB GB free; the build needs $MIN_FREE_GB (SMOKE_MIN_FREE_GB)"
trap teardown EXIT
trap 'die "interrupted"' INT TERM

step "install engine and tools" install_tools
step "start dockerd" start_engine
step "serve local wheels" serve_wheels
step "base images (debootstrap)" base_images
step "redis image (stand-in)" redis_image
step "build glccl:cpu" build_image
step "demo data on the host" prepare_data
step "compose settings and config" compose_settings
step "redis up and healthy" start_redis
step "index build into redis" index_in_redis
step "api up and ready" start_api
step "search" search
step "load test (10/s for 5 s)" load_test
step "redis restart keeps frames" redis_persists
