"""cluster.yaml checked against Ray's own cluster-config schema, and against the README."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_validates_against_rays_schema(cluster: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))  # raises on any schema violation
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_spot"]["min_workers"] = "two"
    with pytest.raises(Exception, match="two"):
        validate_config(prepare_config(broken))


def test_setup_installs_this_project_as_the_readme_does(cluster: dict) -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    main_job = readme[readme.index("# install and run a search on the built-in shapes dataset") + 1]
    install = main_job.split(" && ")[0]
    assert install == "pip install -e ."
    mount = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert f"cd {mount} && {install}" in cluster["setup_commands"]


def test_head_keeps_trials_off_and_services_on_localhost(cluster: dict) -> None:
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--dashboard-host=127.0.0.1" in head
    server = next(c for c in cluster["head_start_ray_commands"] if "mlflow server" in c)
    assert "--host 127.0.0.1" in server and "--artifacts-destination s3://" in server
    assert "--backend-store-uri sqlite:" in server


def test_images_and_spot_workers(cluster: dict) -> None:
    for key in ("image", "head_image"):
        assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py3\d+-(gpu|cpu|cu\d+)", cluster["docker"][key])
    workers = [t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)
    assert all(t["min_workers"] == 0 for t in workers)


def test_no_secrets_in_the_file() -> None:
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|password", text, re.I)
