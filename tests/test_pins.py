"""requirements.txt (the image installs it, then the package with --no-deps) against setup.cfg's
ranges, and in a fresh virtual environment (docs: Deployment, "The image test")."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from .deployfiles import ROOT, pins, ranges, stages


def test_every_runtime_dependency_is_pinned_inside_its_range() -> None:
    pinned = pins()
    for name, requirement in ranges().items():
        assert name in pinned, f"{name} is not pinned in requirements.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside setup.cfg's {requirement}"
        )


def test_extras_are_pinned_at_the_version_of_their_package() -> None:
    """psycopg[binary] installs psycopg-binary at psycopg's own version."""
    pinned = pins()
    assert "binary" in ranges()[canonicalize_name("psycopg")].extras
    assert pinned[canonicalize_name("psycopg-binary")] == pinned[canonicalize_name("psycopg")]


@pytest.mark.process
def test_the_pins_install_in_a_fresh_virtual_environment(tmp_path: Path) -> None:
    """As the Dockerfile installs them, with nothing cached: the pins, then the package alone;
    `pip check` finds every requirement met, and nothing unpinned came along."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]

    def run(*args: str) -> str:
        result = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    run("install", "--require-virtualenv", "-q", "-r", str(ROOT / "requirements.txt"))
    source = tmp_path / "source"  # what the Dockerfile copies, so that the build leaves the tree alone
    source.mkdir()
    for arguments in (arguments for keyword, arguments in stages()[0] if keyword == "COPY"):
        for name in arguments.split()[:-1]:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, source / name)
    run("install", "--require-virtualenv", "-q", "--no-deps", str(source))
    run("check")
    installed = {
        canonicalize_name(package["name"]): package["version"]
        for package in json.loads(run("list", "--format", "json", "--exclude", "pip", "--exclude", "setuptools"))
    }
    assert installed.pop(canonicalize_name("asgi_todo"))
    assert installed == {name: str(version) for name, version in pins().items()}
