"""Re-vendor the Swagger UI and ReDoc files that /docs and /redoc serve, from their npm packages.

    python -m tests.tools.vendor_ui                                  # the versions in the manifest again
    python -m tests.tools.vendor_ui swagger-ui-dist@5.36.0 redoc@2.5.4   # other versions

Run by hand, from the repository's root, with npm on PATH; never at install time. It packs each
package with `npm pack` (which checks the tarball against the registry's integrity), copies
only the files the pages load plus the licence files into asgi_todo/static/<directory>/, and
rewrites asgi_todo/static/manifest.json: each package's version, its tarball's integrity and
the sha256 of each file (tests/test_docs.py checks the files against it). Commit the result.
It lives under tests/ so that it is linted and type-checked with the rest, and never ships in
the wheel (the package only reads the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from asgi_todo.docs import ASSETS, MANIFEST, Vendored, read_manifest


@dataclass(frozen=True)
class Source:
    """An npm package's files that we vendor: file name here -> path inside the tarball."""

    directory: str
    files: Mapping[str, str]


SOURCES = {
    "swagger-ui-dist": Source(
        "swagger-ui",
        {
            name: f"package/{name}"
            for name in (
                "swagger-ui.css",
                "swagger-ui-bundle.js",
                "swagger-ui-bundle.js.LICENSE.txt",
                "favicon-32x32.png",
                "favicon-16x16.png",
                "LICENSE",
                "NOTICE",
            )
        },
    ),
    "redoc": Source(
        "redoc",
        {
            "redoc.standalone.js": "package/bundles/redoc.standalone.js",
            "redoc.standalone.js.LICENSE.txt": "package/bundles/redoc.standalone.js.LICENSE.txt",
            "LICENSE": "package/LICENSE",
        },
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pack(package: str, version: str, into: Path) -> tuple[Path, str]:
    """The package's tarball from npm, and its integrity as npm checked it."""
    result = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(into), f"{package}@{version}"],
        capture_output=True,
        text=True,
        check=True,
    )
    (packed,) = json.loads(result.stdout)
    if (packed["name"], packed["version"]) != (package, version):
        raise SystemExit(f"npm packed {packed['name']}@{packed['version']}, not {package}@{version}")
    return into / packed["filename"], str(packed["integrity"])


def vendor(versions: Mapping[str, str], *, assets: Path = ASSETS) -> dict[str, Vendored]:
    """Replace each package's directory under `assets` with the files of that version."""
    manifest: dict[str, Vendored] = {}
    with tempfile.TemporaryDirectory(prefix="vendor-ui-") as work:
        for package, version in versions.items():
            source = SOURCES[package]
            tarball, integrity = _pack(package, version, Path(work))
            target = assets / source.directory
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            with tarfile.open(tarball) as archive:
                for name, member in source.files.items():
                    extracted = archive.extractfile(member)
                    if extracted is None:
                        raise SystemExit(f"{package}@{version} has no file {member}")
                    (target / name).write_bytes(extracted.read())
            files = {name: sha256(target / name) for name in sorted(source.files)}
            manifest[package] = Vendored(version, integrity, source.directory, files)
    (assets / MANIFEST).write_text(json.dumps(manifest_json(manifest), indent=2) + "\n")
    return manifest


def manifest_json(manifest: Mapping[str, Vendored]) -> dict[str, object]:
    return {
        package: {
            "version": vendored.version,
            "integrity": vendored.integrity,
            "directory": vendored.directory,
            "files": dict(vendored.files),
        }
        for package, vendored in manifest.items()
    }


def _committed() -> bool:
    return (ASSETS / MANIFEST).exists()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.vendor_ui", description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", metavar="NAME@VERSION", help="default: the manifest's versions")
    args = parser.parse_args(argv)
    versions = {package: vendored.version for package, vendored in read_manifest().items()} if _committed() else {}
    for given in args.packages:
        package, _, version = given.rpartition("@")
        if package not in SOURCES or not version:
            parser.error(f"{given!r}: one of {', '.join(f'{name}@VERSION' for name in SOURCES)}")
        versions[package] = version
    missing = SOURCES.keys() - versions.keys()
    if missing:
        parser.error(f"no manifest yet: name every package's version ({', '.join(sorted(missing))})")
    for package, vendored in vendor(versions).items():
        print(f"{package}@{vendored.version}: {len(vendored.files)} files in {ASSETS / vendored.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
