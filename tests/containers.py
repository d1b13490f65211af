"""Podman for the container tests: its configuration for this machine, the local base images
that stand in for `python:3.11-slim` and `postgres:15`, and the app's image.

No registry is reachable here, so each base is made with debootstrap from Debian's packages,
imported into podman's own storage and tagged with the name the Dockerfile or compose.yaml
uses. A base is made again only when its recipe changes: the recipe's hash is an image label.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .deployfiles import ROOT, stages

HERE = Path(__file__).resolve().parent / "container"
SUITE = "bookworm"
KEY_LABEL = "org.asgi-todo.base-key"
APP_IMAGE = "asgi_todo:latest"  # compose.yaml's name for the app's image
# The machine's CA bundle is mounted over the base's own for the build's RUN steps only (a
# path the base has, so that no mount point is left behind in a layer either).
BUILD_CA = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Base:
    """A local stand-in for a registry image: Debian minbase with `packages`, `files` added
    (path in the image, file of this repository), `removed` paths, and image settings."""

    name: str
    packages: tuple[str, ...]
    changes: tuple[str, ...] = ()
    files: tuple[tuple[str, Path], ...] = ()
    removed: tuple[str, ...] = ()

    def key(self) -> str:
        """The hash of the recipe: this base's fields and the code that makes it."""
        recipe = {
            "maker": inspect.getsource(Podman.ensure_base),
            "suite": SUITE,
            "variant": "minbase",
            "packages": self.packages,
            "changes": self.changes,
            "files": {target: hashlib.sha256(source.read_bytes()).hexdigest() for target, source in self.files},
            "removed": self.removed,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


PYTHON_BASE = Base(
    "docker.io/library/python:3.11-slim",
    ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"),
    changes=('CMD ["python3"]',),
)
POSTGRES_BASE = Base(
    "docker.io/library/postgres:15",
    ("postgresql-15",),
    changes=(
        "ENV PGDATA=/var/lib/postgresql/data",
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
        "STOPSIGNAL SIGINT",
        "EXPOSE 5432",
    ),
    files=(("usr/local/bin/docker-entrypoint.sh", HERE / "postgres-entrypoint.sh"),),
    # The cluster Debian's package makes at install; the entry point makes its own.
    removed=("etc/postgresql/15/main", "var/lib/postgresql/15/main"),
)


def limits() -> tuple[int, int]:
    """(nofile, nproc) that the machine allows a container: its hard limits, and no more
    processes than process ids (runc is refused a larger nproc here)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if nofile == resource.RLIM_INFINITY:
        nofile = 1_048_576
    if nproc == resource.RLIM_INFINITY or nproc > pid_max:
        nproc = pid_max
    return nofile, nproc


def containers_conf() -> str:
    """runc with the cgroupfs manager (no systemd here), the machine's limits, and netavark,
    whose aardvark-dns lets compose's services find each other by name."""
    nofile, nproc = limits()
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'runtime = "runc"\n'
        'events_logger = "file"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )


@dataclass(frozen=True)
class Podman:
    """The podman command with this machine's configuration (CONTAINERS_CONF)."""

    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 900, stdin: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, stdin=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode:
            raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-4000:]}")
        return result

    def ulimits(self) -> list[str]:
        nofile, nproc = limits()
        return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]

    def image_id(self, image: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()

    def remove_if_replaced(self, image: str, before: str) -> None:
        """Remove the image `image` named before, once the name has moved to a new one."""
        if before and before != self.image_id(image):
            self.run("rmi", before, check=False)

    def label(self, image: str, name: str) -> str | None:
        found = self.run("image", "inspect", "--format", f'{{{{index .Labels "{name}"}}}}', image, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def ensure_base(self, base: Base, workdir: Path) -> bool:
        """Make `base` unless podman's storage already has it from the same recipe; whether
        it had to be made."""
        key = base.key()
        if self.label(base.name, KEY_LABEL) == key:
            return False
        root = workdir / "rootfs"
        command = [
            "debootstrap", "--variant=minbase", f"--include={','.join(base.packages)}", SUITE, str(root),
            *debian_mirror(),
        ]  # fmt: skip
        made = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if made.returncode:
            raise AssertionError(f"debootstrap for {base.name}: exit {made.returncode}\n{made.stdout[-4000:]}")
        for target, source in base.files:
            shutil.copyfile(source, root / target)
            (root / target).chmod(0o755)
        for path in base.removed:
            shutil.rmtree(root / path)
        for package in (root / "var/cache/apt/archives").glob("*.deb"):
            package.unlink()
        for index in (root / "var/lib/apt/lists").glob("*_*"):
            index.unlink()
        before = self.image_id(base.name)
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            changes = [
                argument for change in (*base.changes, f"LABEL {KEY_LABEL}={key}") for argument in ("--change", change)
            ]
            self.run("import", *changes, "-", base.name, stdin=tar.stdout.fileno() if tar.stdout else None)
        shutil.rmtree(root)
        self.remove_if_replaced(base.name, before)
        return True

    def build_app(self) -> None:
        """This repository's Dockerfile, as it is, on the local base: the docker format keeps
        its HEALTHCHECK; pip in the build trusts the machine's CA bundle, mounted for the RUN
        steps only. The first stage is built and tagged on its own too, so that its layers
        (the cache of the pinned requirements) belong to a name: each image a build replaces
        is removed with the layers only it used, and the cache stays."""
        first = stages()[0][0][1].split()[-1]  # FROM ... AS <first>
        for image, target in ((f"{APP_IMAGE.split(':')[0]}-{first}:cache", ["--target", first]), (APP_IMAGE, [])):
            before = self.image_id(image)
            self.run(
                "build", "--format", "docker", "--network=host", "--pull=never", *self.ulimits(),
                "--volume", f"{machine_ca()}:{BUILD_CA}:ro", *target, "--tag", image, str(ROOT),
            )  # fmt: skip
            self.remove_if_replaced(image, before)

    def wait_healthy(self, container: str, *, timeout: float = 90) -> None:
        """Until the image's own health check passes (`podman healthcheck run`)."""
        deadline = time.monotonic() + timeout
        why = f"not healthy within {timeout}s"
        while time.monotonic() < deadline:
            if self.run("healthcheck", "run", container, check=False).returncode == 0:
                return
            state = self.run("inspect", "--format", "{{.State.Status}} {{.State.Error}}", container, check=False)
            if not state.stdout.startswith("running"):
                why = f"not running: {state.stdout.strip() or state.stderr.strip()}"
                break
            time.sleep(1)
        logs = self.run("logs", container, check=False)
        raise AssertionError(f"{container} {why}:\n{(logs.stdout + logs.stderr)[-4000:]}")


def podman_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def machine_ca() -> Path:
    """The CA bundle this machine's pip trusts."""
    for candidate in (os.environ.get(name) for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return Path("/etc/ssl/certs/ca-certificates.crt")


def debian_mirror(sources: Sequence[Path] = ()) -> list[str]:
    """The Debian mirror apt uses here for the suite, as debootstrap's MIRROR argument (none:
    debootstrap's default)."""
    paths = list(sources) or [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = dict(
                    line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
                )
                uris = fields.get("URIs", "").split()
                if uris and "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    return [uris[0]]
        elif path.suffix == ".list":
            for line in text.splitlines():
                words = [word for word in line.split("#", 1)[0].split() if not word.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return [words[1]]
    return []
