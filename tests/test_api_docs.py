"""/docs and /redoc load only pinned copies of Swagger UI and ReDoc that we serve (they work offline), the copies
are exactly what ops/vendor_assets.py recorded, and a non-editable install ships and serves them too.
(tests/test_api_docs_browser.py renders both pages in Chromium.)"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, child_env

VENDOR = ROOT / "zenzefi_backend" / "static" / "vendor"
DOCS_PAGES = ("/docs", "/redoc")
URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "data"}


class PageParts(HTMLParser):
    """The elements of a page with their attributes, and the text inside each <script> and <style>."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.inline: dict[str, list[str]] = {"script": [], "style": []}
        self._open: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {name: value or "" for name, value in attrs}))
        self._open = tag if tag in self.inline else None
        if self._open:
            self.inline[tag].append("")

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open:
            self.inline[self._open][-1] += data

    def urls(self) -> list[str]:
        return [value for _, attrs in self.elements for name, value in attrs.items() if name in URL_ATTRIBUTES]

    def content_security_policy(self) -> dict[str, str]:
        policy = next(attrs["content"] for tag, attrs in self.elements
                      if tag == "meta" and attrs.get("http-equiv", "").lower() == "content-security-policy")
        return dict(directive.strip().split(" ", 1) for directive in policy.split(";"))


def recorded_sums() -> dict[str, str]:
    """zenzefi_backend/static/vendor/SHA256SUMS as {path under vendor/: sha256}."""
    return {name: digest for digest, _, name in
            (line.partition("  ") for line in (VENDOR / "SHA256SUMS").read_text().splitlines())}


def page(client, path: str) -> PageParts:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    return PageParts(response.get_data(as_text=True))


@pytest.mark.parametrize("path", DOCS_PAGES)
def test_docs_pages_load_everything_from_this_origin_without_inline_code(client, path):
    parts = page(client, path)

    urls = parts.urls()
    assert urls, "the page loads its UI from somewhere"
    # Only paths on this host (or a data: URL); no scheme, no protocol-relative //host.
    assert [url for url in urls if not (url.startswith("data:") or url.startswith("/") and url[1:2] != "/")] == []
    assert any(url.startswith("/static/vendor/") for url in urls)
    # No inline script, style or event handler, so a Content-Security-Policy without 'unsafe-inline' fits.
    assert [text for text in parts.inline["script"] if text.strip()] == []
    assert parts.inline["style"] == []
    assert [(tag, name) for tag, attrs in parts.elements for name in attrs
            if name == "style" or name.startswith("on")] == []
    # What the UIs would fetch by themselves (ReDoc's logo, beacons) stays on this origin too.
    policy = parts.content_security_policy()
    assert policy["img-src"] == "'self' data:"
    assert policy["connect-src"] == "'self'"


def test_docs_pages_use_only_recorded_vendored_files(client):
    sums = recorded_sums()
    for path in DOCS_PAGES:
        vendored = [url.removeprefix("/static/vendor/") for url in page(client, path).urls()
                    if url.startswith("/static/vendor/")]
        assert vendored and set(vendored) <= sums.keys(), f"{path} loads {vendored}"


def test_vendored_files_are_served_exactly_as_recorded(client):
    sums = recorded_sums()
    on_disk = {file.relative_to(VENDOR).as_posix() for file in VENDOR.rglob("*")
               if file.is_file() and file.name != "SHA256SUMS"}
    assert on_disk == sums.keys(), "every vendored file is listed in SHA256SUMS and nothing else is there"
    for name, digest in sums.items():
        response = client.get(f"/static/vendor/{name}")
        assert response.status_code == 200, name
        assert hashlib.sha256(response.get_data()).hexdigest() == digest, f"{name} differs from SHA256SUMS"
    # Each package's licence travels with it.
    for package in {name.split("/")[0] for name in sums}:
        assert f"{package}/LICENSE" in sums


def load_vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_assets", ROOT / "ops" / "vendor_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendor_script_check_passes_on_the_committed_files():
    result = subprocess.run([sys.executable, "ops/vendor_assets.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vendored assets match SHA256SUMS" in result.stdout


def test_vendor_script_check_names_an_edited_missing_or_unlisted_file(tmp_path, monkeypatch):
    script = load_vendor_script()
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    monkeypatch.setattr(script, "VENDOR", copy)
    monkeypatch.setattr(script, "SUMS", copy / "SHA256SUMS")
    assert script.check() == []

    bundle = next(copy.glob("swagger-ui-dist-*/swagger-ui-bundle.js"))
    bundle.write_bytes(bundle.read_bytes() + b"\n")
    licence = next(copy.glob("redoc-*/LICENSE"))
    licence.unlink()
    (copy / "stray.js").write_text("alert(1)")

    assert sorted(script.check()) == sorted([
        f"changed: {bundle.relative_to(copy).as_posix()}",
        f"missing: {licence.relative_to(copy).as_posix()}",
        "not in SHA256SUMS: stray.js",
    ])


SERVE_FROM_BUILD = textwrap.dedent("""
    import hashlib, json, re, sys
    import zenzefi_backend
    from zenzefi_backend import create_app

    client = create_app({"ZENZEFI_ENV": "testing"}).test_client()
    report = {"package": zenzefi_backend.__file__, "pages": {}, "assets": {}}
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        html = response.get_data(as_text=True)
        report["pages"][page] = response.status_code
        for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            asset = client.get(url)
            report["assets"][url] = [asset.status_code, hashlib.sha256(asset.get_data()).hexdigest()]
    json.dump(report, sys.stdout)
""")


def test_a_non_editable_build_ships_and_serves_the_docs_assets(tmp_path):
    """setuptools' build_py stages what a wheel (`pip install .`) contains; the app is then run from there."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("zenzefi_backend", "worker"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "build"
    built = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                            "build_py", "--build-lib", str(build)],
                           cwd=source, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "deprecated" not in built.stderr.lower(), built.stderr

    instance = tmp_path / "instance"
    instance.mkdir()
    env = child_env(None, None, instance, {"PYTHONPATH": str(build)})
    served = subprocess.run([sys.executable, "-c", SERVE_FROM_BUILD], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert served.returncode == 0, served.stderr
    report = json.loads(served.stdout)

    assert Path(report["package"]).is_relative_to(build), "the app ran from the build, not the source tree"
    assert report["pages"] == {"/docs": 200, "/redoc": 200}
    sums = recorded_sums()
    vendored = {url.removeprefix("/static/vendor/"): answer for url, answer in report["assets"].items()
                if url.startswith("/static/vendor/")}
    assert vendored and {name: [200, sums.get(name)] for name in vendored} == vendored
    assert all(status == 200 for status, _ in report["assets"].values()), report["assets"]
