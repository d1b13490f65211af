"""deploy/kubernetes: rendered by kustomize (`kubectl kustomize`), every object valid against
the Kubernetes schemas (kubernetes-validate, strict), and checked against the code: the
probes, the image's user and port, the writable paths, the settings (docs: Deployment, "Kubernetes")."""

from __future__ import annotations

import configparser
import functools
import ipaddress
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from starlette.routing import BaseRoute

from asgi_todo.__main__ import main
from asgi_todo.app import create_app
from asgi_todo.gunicorn_conf import read
from asgi_todo.settings import Settings, load_settings
from asgi_todo.startup import lock_path

from .deployfiles import (
    GUNICORN_VARIABLES,
    ROOT,
    START_VARIABLES,
    dockerfile,
    image_user,
    setting_names,
    writable_paths,
)
from .helpers import make_settings, require

KUSTOMIZATIONS = ("base", "overlays/production")
KINDS = {
    "ServiceAccount", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    "Job", "NetworkPolicy",
}  # fmt: skip
SECRETS = {"DATABASE_URL", "SECRET_KEY"}
# kubectl kustomize renders the manifests, a subprocess for each kustomization
pytestmark = pytest.mark.process


@functools.cache
def _render(kustomization: str) -> list[dict[str, Any]]:
    command = ["kubectl", "kustomize"] if shutil.which("kubectl") else ["kustomize", "build"]
    require(shutil.which(command[0]) is not None, "kustomize (kubectl kustomize, or kustomize)")
    rendered = subprocess.run(
        [*command, str(ROOT / "deploy" / "kubernetes" / kustomization)], capture_output=True, text=True, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


@pytest.fixture(params=KUSTOMIZATIONS)
def objects(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """The rendered objects by kind (one of each)."""
    documents = _render(request.param)
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents), "one object of each kind"
    return by_kind


def _pods(objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod templates: the API's and the migration Job's."""
    return [objects[kind]["spec"]["template"] for kind in ("Deployment", "Job")]


def _environment(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    """What a container sees: the ConfigMap, plus a value for each secret reference."""
    environment: dict[str, str] = dict(objects["ConfigMap"]["data"])
    for pod in _pods(objects):
        for container in pod["spec"]["containers"]:
            assert container["envFrom"] == [{"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}}]
            for variable in container["env"]:
                assert variable["valueFrom"]["secretKeyRef"]["name"] == "asgi-todo", variable
                environment[variable["name"]] = "from the Secret"
    return environment


def test_every_object_is_valid_against_the_kubernetes_schemas(objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == KINDS
    version = kubernetes_validate.latest_version()
    for document in objects.values():
        kubernetes_validate.validate(document, version, strict=True)


def test_the_overlay_changes_only_what_it_says() -> None:
    base = {document["kind"]: document for document in _render("base")}
    overlay = {document["kind"]: document for document in _render("overlays/production")}
    assert {document["metadata"].get("namespace") for document in overlay.values()} == {"asgi-todo"}
    assert overlay["Deployment"]["spec"]["replicas"] == 3
    assert overlay["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    assert base["ConfigMap"]["data"].keys() == overlay["ConfigMap"]["data"].keys()
    images = {pod["spec"]["containers"][0]["image"] for pod in _pods(overlay)}
    assert images == {"asgi_todo:1.0.0"}


def test_two_or_more_replicas_behind_the_service_autoscaler_and_budget(objects: dict[str, dict[str, Any]]) -> None:
    deployment, service = objects["Deployment"], objects["Service"]
    autoscaler, budget = objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not service["spec"]["selector"].items() <= objects["Job"]["spec"]["template"]["metadata"]["labels"].items()
    assert 1 <= budget["spec"]["minAvailable"] < replicas, "a node drain must be able to move a replica"
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "asgi-todo"}
    assert 2 <= autoscaler["spec"]["minReplicas"] <= replicas <= autoscaler["spec"]["maxReplicas"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "metrics": int(objects["ConfigMap"]["data"]["METRICS_PORT"])}
    port = {"name": "http", "containerPort": ports["http"]}
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    exposed = [arguments for keyword, arguments in dockerfile() if keyword == "EXPOSE"]
    assert exposed == [str(port["containerPort"])]
    assert objects["ConfigMap"]["data"]["PORT"] == str(port["containerPort"])


def test_probes_ask_liveness_and_readiness_on_the_container_port(objects: dict[str, dict[str, Any]]) -> None:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": "/livez",
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
    }
    assert {probe["port"] for probe in probes.values()} == {"http"}
    assert {port["name"] for port in container["ports"]} >= {"http"}


# /livez and /readyz: the liveness and readiness probes (docs: Deployment, "Probes and a graceful stop").
def test_probe_paths_are_routes_of_the_app(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path}/todo.db"))
    paths = {route.path for route in app.routes if isinstance(route, BaseRoute) and hasattr(route, "path")}
    (container,) = yaml.safe_load((ROOT / "deploy/kubernetes/base/deployment.yaml").read_text())["spec"]["template"][
        "spec"
    ]["containers"]
    probes = {container[name]["httpGet"]["path"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes <= paths, sorted(probes - paths)


def test_pods_run_as_the_image_user_non_root_read_only_without_a_token(objects: dict[str, dict[str, Any]]) -> None:
    uid, gid = (int(part) for part in image_user().split(":"))
    settings = make_settings("postgresql+psycopg://user:password@db.example:5432/app")
    for pod in _pods(objects):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
        assert objects["ServiceAccount"]["automountServiceAccountToken"] is False
        context = spec["securityContext"]
        assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (True, uid, gid)
        (container,) = spec["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]
        # The one file the app writes outside the database: the start-up lock (PostgreSQL).
        writable = writable_paths(spec)
        assert any(lock_path(settings).is_relative_to(path) for path in writable), writable


def test_every_variable_is_a_setting_and_every_setting_is_set(
    objects: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = _environment(objects)
    known = setting_names() | GUNICORN_VARIABLES | START_VARIABLES
    assert environment.keys() <= known, f"not read by the code: {sorted(environment.keys() - known)}"
    wanted = {name.upper() for name in Settings.model_fields}
    assert wanted <= environment.keys(), f"not set: {sorted(wanted - environment.keys())}"
    assert environment.keys() - objects["ConfigMap"]["data"].keys() >= SECRETS, "secrets come from the Secret"
    environment.update(
        DATABASE_URL="postgresql://asgi_todo:password@db.example:5432/asgi_todo", SECRET_KEY=secrets.token_urlsafe(48)
    )
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert not settings.reset_db
    assert not settings.update_db, "the schema is the migration Job's work"
    options = read(environment, cores=64)
    assert options.workers == int(environment["WEB_CONCURRENCY"]), "not the node's CPU count"
    grace = objects["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # On SIGTERM readiness fails first for DRAIN_SECONDS, then requests get GRACEFUL_TIMEOUT.
    assert settings.drain_seconds + options.graceful_timeout < grace, "the kubelet would kill requests still finishing"


def test_the_migration_job_runs_a_real_command(
    objects: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = objects["Job"]["spec"]["template"]["spec"]["containers"]
    program, *arguments = container["command"]
    assert (program, arguments) == ("asgi-todo", ["db", "upgrade"])
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert f"{program} = asgi_todo.__main__:main" in config["options.entry_points"]["console_scripts"]
    assert objects["Job"]["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/todo.db")
    monkeypatch.setenv("SECRET_KEY", secrets.token_urlsafe(48))
    assert main(arguments) == 0
    assert main(arguments) == 0, "a second run changes nothing and succeeds"


def test_the_network_policy_admits_http_and_lets_out_dns_and_postgresql(objects: dict[str, dict[str, Any]]) -> None:
    policy = objects["NetworkPolicy"]["spec"]
    for pod in _pods(objects):
        assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert [rule["ports"] for rule in policy["ingress"]] == [
        [{"port": "http", "protocol": "TCP"}],
        [{"port": "metrics", "protocol": "TCP"}],
    ]
    allowed = {(port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]}
    assert allowed == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}


def test_production_trusts_the_ingress_and_nothing_wider_for_forwarded_addresses() -> None:
    """docs: Behind a proxy, Per setup. The overlay trusted all of 10.0.0.0/8 while its NetworkPolicy
    admitted every pod of the namespace, so any of them could write the counters' key. Now a
    narrow range (the ingress controller's pods), and HTTP from the ingress namespace only;
    the base trusts nothing that connects to a pod (loopback only) until an overlay says."""
    base = {document["kind"]: document for document in _render("base")}
    overlay = {document["kind"]: document for document in _render("overlays/production")}
    trusted = overlay["ConfigMap"]["data"]["FORWARDED_ALLOW_IPS"].split(",")
    assert "*" not in trusted
    networks = [ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted]
    assert networks
    assert all(network.num_addresses <= 256 for network in networks), networks
    assert all(
        ipaddress.ip_network(entry.strip()).is_loopback
        for entry in base["ConfigMap"]["data"]["FORWARDED_ALLOW_IPS"].split(",")
    )
    (http,) = [
        rule
        for rule in overlay["NetworkPolicy"]["spec"]["ingress"]
        if {"port": "http", "protocol": "TCP"} in rule["ports"]
    ]
    assert http["from"] == [{"namespaceSelector": {"matchLabels": {"asgi-todo.io/ingress": "allowed"}}}]


def test_the_cloudnative_pg_cluster_fails_over_without_losing_a_commit() -> None:
    """deploy/kubernetes/cloudnative-pg (docs/high-availability.md): three instances on three
    nodes, a commit confirmed by a standby before it is acknowledged (and writes waiting when
    none is there), in the production overlay's namespace; the docs name its read-write
    Service, which the operator keeps on the primary, as DATABASE_URL's host. (Its schema is
    the operator's custom resource, which the Kubernetes schemas do not hold.)"""
    path = ROOT / "deploy" / "kubernetes" / "cloudnative-pg" / "cluster.yaml"
    (cluster,) = [document for document in yaml.safe_load_all(path.read_text()) if document]
    assert (cluster["apiVersion"], cluster["kind"]) == ("postgresql.cnpg.io/v1", "Cluster")
    spec = cluster["spec"]
    assert spec["instances"] >= 3
    assert spec["postgresql"]["synchronous"] == {"method": "any", "number": 1, "dataDurability": "required"}
    assert (spec["affinity"]["enablePodAntiAffinity"], spec["affinity"]["podAntiAffinityType"]) == (True, "required")
    assert spec["primaryUpdateMethod"] == "switchover"
    overlay = {document["kind"]: document for document in _render("overlays/production")}
    assert cluster["metadata"]["namespace"] == overlay["Deployment"]["metadata"]["namespace"]
    docs = (ROOT / "docs" / "high-availability.md").read_text()
    assert f"{cluster['metadata']['name']}-rw" in docs
    assert f"secret {cluster['metadata']['name']}-app" in path.read_text()
