"""cluster.yaml checked against Ray's own cluster-config schema, and against the README."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKER_POLICY = REPO / "docs" / "worker-s3-policy.json"
# the account: 12 digits, or the file's CHANGE-ME placeholder; the name may carry an IAM path
PROFILE_ARN = re.compile(
    r"arn:aws:iam::(\d{12}|CHANGE-ME[\w-]*):instance-profile/((?:[\w+=,.@-]+/)*)([\w+=,.@-]+)")
OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


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
    assert "--app-name orchestrator" in server  # the UI opens a search on its runs (ui_app.py)


def test_images_and_spot_workers(cluster: dict) -> None:
    for key in ("image", "head_image"):
        assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py3\d+-(gpu|cpu|cu\d+)", cluster["docker"][key])
    workers = [t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)
    assert all(t["min_workers"] == 0 for t in workers)


def test_no_secrets_in_the_file() -> None:
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|password", text, re.I)


def _cluster_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## On a GPU cluster (AWS)")
    return re.sub(r"\s*\n\s*", " ", text[start:text.index("\n## ", start + 1)])


def _workers(cluster: dict) -> dict[str, dict]:
    types = cluster["available_node_types"]
    return {name: t for name, t in types.items() if name != cluster["head_node_type"]}


def test_every_worker_has_an_instance_profile(cluster: dict) -> None:
    """Trials (and their S3 checkpoints) run on the workers; Ray's default profile goes to the head only."""
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(copy.deepcopy(cluster))
    for name, node_type in _workers(cluster).items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile, f"{name}: no IamInstanceProfile, so its trials cannot write checkpoints to S3"
        assert set(profile) == {"Arn"} and PROFILE_ARN.fullmatch(profile["Arn"]), (name, profile)
        assert prepared["available_node_types"][name]["node_config"]["IamInstanceProfile"] == profile
    # the head keeps Ray's default profile (ray-autoscaler-v1), the role the README says to extend
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert "IamInstanceProfile" not in head["node_config"]


def test_readme_says_what_the_worker_profile_needs(cluster: dict) -> None:
    section = _cluster_section()
    assert "`docs/worker-s3-policy.json`" in section
    names = {PROFILE_ARN.fullmatch(t["node_config"]["IamInstanceProfile"]["Arn"])[3]
             for t in _workers(cluster).values()}
    for name in names:  # the role the README says to create, and to let the head pass on
        assert f"`{name}`" in section and f"role/{name}`" in section
    assert "`iam:PassRole`" in section and "`ray-autoscaler-v1`" in section
    for action in OBJECT_ACTIONS | {"s3:ListBucket"}:
        assert f"`{action}`" in section


def test_worker_policy_grants_exactly_the_tune_storage_actions() -> None:
    policy = json.loads(WORKER_POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    granted: set[tuple[str, str]] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}  # no Not*, no Condition
        actions, resources = statement["Action"], statement["Resource"]
        for action in [actions] if isinstance(actions, str) else actions:
            for resource in [resources] if isinstance(resources, str) else resources:
                granted.add((action, resource))
    (bucket,) = {re.fullmatch(r"arn:aws:s3:::([\w.-]+?)(/\*)?", resource)[1] for _, resource in granted}
    assert "CHANGE-ME" in bucket or re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket)
    bucket_arn = f"arn:aws:s3:::{bucket}"
    assert granted == {("s3:ListBucket", bucket_arn)} | {(a, f"{bucket_arn}/*") for a in OBJECT_ACTIONS}
