"""Vendor the API documentation UIs (Swagger UI for /docs, ReDoc for /redoc) as static files of the package.

    python3 ops/vendor_assets.py swagger-ui-dist 5.35.0   # fetch one package at a version, replace the old one
    python3 ops/vendor_assets.py --check                  # verify the vendored files against SHA256SUMS

`npm pack` fetches the package's tarball from the configured npm registry (npm checks it against the
registry's integrity hash); only the files the docs pages load, and their licences, are copied to
zenzefi_backend/static/vendor/<package>-<version>/, any other version of that package is removed, and
zenzefi_backend/static/vendor/SHA256SUMS (`sha256sum -c` format) is rewritten. The docs pages find the files
through SWAGGER_UI_DIST / REDOC_STANDALONE in zenzefi_backend/config/__init__.py; the script says when those
name another version.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "zenzefi_backend" / "static" / "vendor"
SUMS = VENDOR / "SHA256SUMS"
CONFIG = ROOT / "zenzefi_backend" / "config" / "__init__.py"

# Per npm package: file in the tarball (under package/) -> name in the vendored directory.
PACKAGES: dict[str, dict[str, str]] = {
    "swagger-ui-dist": {
        "swagger-ui-bundle.js": "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.LICENSE.txt": "swagger-ui-bundle.js.LICENSE.txt",
        "swagger-ui.css": "swagger-ui.css",
        "LICENSE": "LICENSE",
        "NOTICE": "NOTICE",
    },
    "redoc": {
        "bundles/redoc.standalone.js": "redoc.standalone.js",
        "bundles/redoc.standalone.js.LICENSE.txt": "redoc.standalone.js.LICENSE.txt",
        "LICENSE": "LICENSE",
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vendored_files() -> list[Path]:
    """Every vendored file (not SHA256SUMS itself), sorted by path."""
    return sorted(path for path in VENDOR.rglob("*") if path.is_file() and path != SUMS)


def write_sums() -> None:
    lines = [f"{sha256(path)}  {path.relative_to(VENDOR).as_posix()}\n" for path in vendored_files()]
    SUMS.write_text("".join(lines))


def read_sums() -> dict[str, str]:
    """SHA256SUMS as {relative path: sha256}."""
    sums = {}
    for line in SUMS.read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


def check() -> list[str]:
    """What differs between the vendored files and SHA256SUMS (empty when they agree)."""
    recorded = read_sums()
    present = {path.relative_to(VENDOR).as_posix(): sha256(path) for path in vendored_files()}
    problems = [f"missing: {name}" for name in sorted(recorded.keys() - present.keys())]
    problems += [f"not in SHA256SUMS: {name}" for name in sorted(present.keys() - recorded.keys())]
    problems += [f"changed: {name}" for name in sorted(recorded.keys() & present.keys())
                 if recorded[name] != present[name]]
    return problems


def npm_pack(package: str, version: str, destination: Path) -> Path:
    """The package's tarball, downloaded by npm into `destination`."""
    result = subprocess.run(
        ["npm", "pack", f"{package}@{version}", "--json", "--ignore-scripts", "--pack-destination", str(destination)],
        cwd=destination, check=True, capture_output=True, text=True,
    )
    packed = json.loads(result.stdout)[0]
    if packed["version"] != version:
        raise SystemExit(f"npm packed {package}@{packed['version']}, not {version}")
    return destination / packed["filename"]


def vendor(package: str, version: str) -> Path:
    files = PACKAGES[package]
    target = VENDOR / f"{package}-{version}"
    with tempfile.TemporaryDirectory(prefix="zenzefi-vendor-") as scratch:
        tarball = npm_pack(package, version, Path(scratch))
        staged = Path(scratch) / "staged"
        staged.mkdir()
        with tarfile.open(tarball) as archive:
            # Only the named regular files are read, so nothing in the archive can write elsewhere.
            for source, name in files.items():
                member = archive.getmember(f"package/{source}")
                if not member.isfile():
                    raise SystemExit(f"{package}@{version}: {source} is not a regular file")
                (staged / name).write_bytes(archive.extractfile(member).read())
        for old in VENDOR.glob(f"{package}-*"):
            if old.is_dir() and old.name[len(package) + 1:][:1].isdigit():
                shutil.rmtree(old)
        VENDOR.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, target)
    write_sums()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", choices=sorted(PACKAGES))
    parser.add_argument("version", nargs="?")
    parser.add_argument("--check", action="store_true", help="verify the vendored files against SHA256SUMS")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem)
        print("vendored assets match SHA256SUMS" if not problems else "vendored assets differ from SHA256SUMS")
        return 1 if problems else 0
    if not (args.package and args.version):
        parser.error("give a package and a version, or --check")
    target = vendor(args.package, args.version)
    print(f"vendored {args.package}@{args.version} into {target.relative_to(ROOT)}; SHA256SUMS rewritten")
    if target.name not in CONFIG.read_text():
        print(f"now point SWAGGER_UI_DIST / REDOC_STANDALONE in {CONFIG.relative_to(ROOT)} at {target.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
