"""deploy/compose.yaml, checked without a Docker engine: the gateway's settings exist, and the
addresses it is given name the services and ports that serve them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "EMBEDSERVE_"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))


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
    assert environment["EMBEDSERVE_TRITON_URL"] == "triton:8000" and "--model-repository=/srv/artifacts/triton" in services["triton"]["command"]
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
