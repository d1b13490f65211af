"""Reading the files that build and deploy the service: the Dockerfile, the dependencies
(setup.cfg's ranges, requirements.txt's pins) and the names of the variables the code reads."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from asgi_todo.settings import ServerSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
# The launchers' settings (gunicorn's, and asgi-todo serve's).
GUNICORN_VARIABLES = {name.upper() for name in ServerSettings.model_fields}
START_VARIABLES = {"PRE_START_PATH", "DEV"}


def setting_names() -> set[str]:
    """Every variable the settings read."""
    names = {name.upper() for name in Settings.model_fields}
    return names | {"SQLALCHEMY_DATABASE_URI"}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def image_user() -> str:
    """The final stage's USER, as written (`uid:gid`)."""
    return [arguments for keyword, arguments in stages()[-1] if keyword == "USER"][-1]


def ranges() -> dict[NormalizedName, Requirement]:
    """setup.cfg's runtime dependencies."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [Requirement(line) for line in config["options"]["install_requires"].split("\n") if line]
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def pins() -> dict[NormalizedName, Version]:
    """requirements.txt: each line must pin one version (`name==version`)."""
    pinned: dict[NormalizedName, Version] = {}
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier, *others) = requirement.specifier
        assert specifier.operator == "==", f"not pinned: {line}"
        assert not others, f"more than one version: {line}"
        pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


KUBERNETES_BASE = ROOT / "deploy" / "kubernetes" / "base"


def writable_paths(pod: dict[str, Any]) -> list[str]:
    """Where a pod's containers may write under a read-only root: their emptyDir mounts."""
    empty = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
    return [
        mount["mountPath"]
        for container in pod["containers"]
        for mount in container.get("volumeMounts", [])
        if mount["name"] in empty
    ]


def deployment_pod() -> dict[str, Any]:
    """The pod of the base Deployment, as written."""
    deployment: dict[str, Any] = yaml.safe_load((KUBERNETES_BASE / "deployment.yaml").read_text())
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod
