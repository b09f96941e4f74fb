"""The deployment files (docker compose, Dockerfile, Slurm, Kubernetes) are valid and wired the way the fleet needs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tunefleet.cli import build_parser
from worker.command import build_parser as build_worker_parser

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SBATCH_SCRIPT = ROOT / "deploy" / "slurm" / "tunefleet-workers.sbatch"
K8S_DIR = ROOT / "deploy" / "k8s"
GPU_RESOURCE = "nvidia.com/gpu"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def k8s_manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def k8s_manifest(kind: str, name: str) -> dict[str, Any]:
    for doc in k8s_manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name} in {K8S_DIR}")


def pod_container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def assert_tunefleet_command_parses(command: list[str]) -> None:
    """The command line names a real `tunefleet` subcommand with options the CLI accepts."""
    assert command[0] == "tunefleet", command
    try:
        if command[1:2] == ["worker"]:
            # The worker's flags are its own parser's (worker/command.py); `tunefleet` hands them over.
            build_worker_parser().parse_args(command[2:])
        else:
            build_parser().parse_args(command[1:])
    except SystemExit as error:
        raise AssertionError(f"the tunefleet CLI rejects {shlex.join(command)}") from error


# -- docker compose and the image ----------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_depends_on_targets_exist_as_services() -> None:
    # The compose schema cannot check this: a typo in a depends_on name only fails at `docker compose up`.
    services = compose()["services"]
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"


def test_compose_has_db_service_and_worker_wired_to_one_postgres_store() -> None:
    config = compose()
    services = config["services"]
    assert set(services) >= {"db", "service", "worker"}
    assert services["db"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    named_volumes = set(config["volumes"])
    assert {v.split(":")[0] for v in services["db"]["volumes"]} <= named_volumes
    for name in ("service", "worker"):
        url = services[name]["environment"]["TUNEFLEET_DATABASE_URL"]
        assert re.fullmatch(r"postgresql://\w+:\w+@db:5432/\w+", url), url
        assert services[name]["build"] == "."
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["service"]["command"] == "tunefleet serve --host 0.0.0.0 --port 8000"
    assert "8000:8000" in services["service"]["ports"]


def test_compose_service_healthcheck_probes_healthz_not_the_dashboard() -> None:
    test = " ".join(compose()["services"]["service"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in test


def test_compose_worker_reserves_an_nvidia_gpu_and_can_be_scaled() -> None:
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    # A fixed container name or a published port would make `--scale worker=N` fail on the second replica.
    assert "container_name" not in worker
    assert "ports" not in worker
    cache_dir = worker["environment"]["TUNEFLEET_CACHE_DIR"]
    volume, mount = worker["volumes"][0].split(":")
    assert volume in compose()["volumes"]
    assert mount == cache_dir


def test_workers_read_study_files_under_a_data_root_the_deployment_mounts() -> None:
    # Without TUNEFLEET_DATA_ROOTS a container's worker would read only its working folder, where no data is.
    worker = compose()["services"]["worker"]
    root = worker["environment"]["TUNEFLEET_DATA_ROOTS"]
    assert any(volume.endswith(f":{root}:ro") for volume in worker["volumes"]), worker["volumes"]
    container = pod_container(k8s_manifest("Deployment", "tunefleet-worker"), "worker")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TUNEFLEET_DATA_ROOTS"] == "/data"


def test_compose_commands_are_accepted_by_the_tunefleet_cli() -> None:
    for name in ("service", "worker"):
        assert_tunefleet_command_parses(shlex.split(compose()["services"][name]["command"]))


def test_dockerfile_installs_cuda_torch_before_the_package_and_runs_as_non_root() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11")
    assert any(re.fullmatch(r'ARG TORCH_SPEC="torch[^"]*"', line) for line in instructions)
    torch_step = instructions.index('RUN pip install "${TORCH_SPEC}"')
    # The package step installs the locked versions, as `make install` does.
    package_step = instructions.index("RUN pip install --constraint requirements.lock .")
    # torch in its own earlier layer: editing our code must not re-download gigabytes of CUDA wheels.
    assert torch_step < package_step
    assert "download.pytorch.org/whl/cpu" not in DOCKERFILE.read_text()
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_dockerfile_copies_only_files_that_exist_and_are_not_docker_ignored() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    copied: set[str] = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _destination = line.split()[1:]
            copied.update(sources)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} is missing"
                assert source not in ignored, f"COPY source {source} is excluded by .dockerignore"
    # `pip install .` in the image must see every package pyproject.toml ships.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {pattern.rstrip("*") for pattern in packages["find"]["include"]} <= copied


# -- Slurm -----------------------------------------------------------------------------------------


def run_sbatch_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the batch script as Slurm would on the first node, with stand-ins for srun and tunefleet."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("srun", "tunefleet"):
        stub = fake_bin / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*"\n')
        stub.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFLEET_", "SLURM_"))}
    return subprocess.run(
        ["bash", str(SBATCH_SCRIPT), "--exit-when-idle"],
        env={**base, "PATH": f"{fake_bin}:{os.environ['PATH']}", "TMPDIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_slurm_script_passes_bash_syntax_check() -> None:
    result = subprocess.run(["bash", "-n", str(SBATCH_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_slurm_script_asks_for_one_task_per_node_and_gpus() -> None:
    directives = re.findall(r"^#SBATCH (\S+)", SBATCH_SCRIPT.read_text(), flags=re.MULTILINE)
    assert "--ntasks-per-node=1" in directives
    assert any(d.startswith(("--gres=gpu", "--gpus")) for d in directives)


def test_slurm_script_fails_early_when_the_database_url_is_unset(tmp_path: Path) -> None:
    result = run_sbatch_script(tmp_path)
    assert result.returncode != 0
    assert "TUNEFLEET_DATABASE_URL is not set" in result.stderr
    assert "srun" not in result.stdout


def test_slurm_script_refuses_a_sqlite_store_shared_by_several_nodes(tmp_path: Path) -> None:
    result = run_sbatch_script(
        tmp_path, TUNEFLEET_DATABASE_URL="sqlite:///shared/tunefleet.db", SLURM_JOB_NUM_NODES="2"
    )
    assert result.returncode != 0
    assert "SQLite" in result.stderr


def test_slurm_script_starts_one_worker_per_node_on_all_its_gpus(tmp_path: Path) -> None:
    result = run_sbatch_script(
        tmp_path, TUNEFLEET_DATABASE_URL="postgresql://u:p@db:5432/t", SLURM_JOB_NUM_NODES="2"
    )
    assert result.returncode == 0, result.stderr
    srun_line = next(line for line in result.stdout.splitlines() if line.startswith("srun "))
    srun_args = shlex.split(srun_line)[1:]
    assert "--ntasks-per-node=1" in srun_args
    worker_command = srun_args[srun_args.index("tunefleet") :]
    assert worker_command[:4] == ["tunefleet", "worker", "--gpus", "all"]
    assert worker_command[-1] == "--exit-when-idle"  # the script's own arguments reach the workers
    assert_tunefleet_command_parses(worker_command)


# -- Kubernetes ------------------------------------------------------------------------------------


def test_kubernetes_manifests_parse_and_name_their_api_version_kind_and_name() -> None:
    manifests = k8s_manifests()
    assert {(m["kind"], m["metadata"]["name"]) for m in manifests} >= {
        ("Secret", "tunefleet-database"),
        ("Deployment", "tunefleet-service"),
        ("Service", "tunefleet"),
        ("Deployment", "tunefleet-worker"),
    }
    for manifest in manifests:
        assert manifest["apiVersion"] and manifest["kind"] and manifest["metadata"]["name"], manifest


@pytest.mark.parametrize("path", sorted(K8S_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(path: Path) -> None:
    # kubernetes-validate ships the API's JSON schemas: offline, and strict rejects misspelled fields.
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_worker_requests_an_nvidia_gpu_and_runs_one_process_per_gpu() -> None:
    worker = pod_container(k8s_manifest("Deployment", "tunefleet-worker"), "worker")
    assert int(worker["resources"]["limits"][GPU_RESOURCE]) >= 1
    assert worker["command"][:4] == ["tunefleet", "worker", "--gpus", "all"]
    assert_tunefleet_command_parses(worker["command"])


def test_kubernetes_pods_read_the_database_url_from_the_secret() -> None:
    secret = k8s_manifest("Secret", "tunefleet-database")
    for deployment, container in (("tunefleet-service", "service"), ("tunefleet-worker", "worker")):
        env = {e["name"]: e for e in pod_container(k8s_manifest("Deployment", deployment), container)["env"]}
        ref = env["TUNEFLEET_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
        assert "value" not in env["TUNEFLEET_DATABASE_URL"]


def test_kubernetes_service_probes_readyz_for_readiness_and_healthz_for_liveness() -> None:
    container = pod_container(k8s_manifest("Deployment", "tunefleet-service"), "service")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert_tunefleet_command_parses(container["command"])
    assert container["command"][-2:] == ["--port", "8000"]


def test_kubernetes_service_routes_port_8000_to_the_service_pods() -> None:
    deployment = k8s_manifest("Deployment", "tunefleet-service")
    service = k8s_manifest("Service", "tunefleet")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in pod_container(deployment, "service")["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == 8000
    assert ports[service_port["targetPort"]] == 8000


# -- the service's token ------------------------------------------------------------------------------


def test_compose_service_refuses_to_start_without_an_api_token() -> None:
    # The service listens on 0.0.0.0 (published port 8000), which `tunefleet serve` refuses without a token;
    # compose's ${VAR:?message} stops `docker compose up` with that message when the variable is unset.
    token = compose()["services"]["service"]["environment"]["TUNEFLEET_API_TOKEN"]
    assert re.fullmatch(r"\$\{TUNEFLEET_API_TOKEN:\?[^}]+\}", token), token


def test_kubernetes_service_reads_its_api_token_from_a_secret() -> None:
    secret = k8s_manifest("Secret", "tunefleet-api-token")
    container = pod_container(k8s_manifest("Deployment", "tunefleet-service"), "service")
    env = {e["name"]: e for e in container["env"]}
    ref = env["TUNEFLEET_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    assert "value" not in env["TUNEFLEET_API_TOKEN"]


def test_compose_service_and_workers_share_one_model_store() -> None:
    # Workers save each best model to TUNEFLEET_ARTIFACT_DIR and the service serves it from there: left at
    # the default, each container kept its own (and lost it with the container).
    config = compose()
    services = config["services"]
    dirs = {services[name]["environment"]["TUNEFLEET_ARTIFACT_DIR"] for name in ("service", "worker")}
    assert len(dirs) == 1
    [artifact_dir] = dirs
    for name in ("service", "worker"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(artifact_dir) in config["volumes"]
    assert services["service"]["volumes"] and services["worker"]["volumes"]
    assert (
        len({m for name in ("service", "worker") for m in services[name]["volumes"] if artifact_dir in m})
        == 1
    )


def test_kubernetes_service_and_workers_mount_one_shared_model_store() -> None:
    claim = k8s_manifest("PersistentVolumeClaim", "tunefleet-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes write to it
    for deployment, container in (("tunefleet-service", "service"), ("tunefleet-worker", "worker")):
        manifest = k8s_manifest("Deployment", deployment)
        pod = pod_container(manifest, container)
        env = {e["name"]: e.get("value") for e in pod["env"]}
        volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in pod["volumeMounts"] if m["mountPath"] == env["TUNEFLEET_ARTIFACT_DIR"])
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "tunefleet-artifacts"
