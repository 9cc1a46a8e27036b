"""`jobs/` sits on top of `notifications/`: jobs import the delivery code, and the delivery code enqueues jobs by
their dotted name, never by importing them — counting imports inside functions too."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import zenzefi_backend
from zenzefi_backend.notifications import email, outbox, webhooks

PACKAGE = Path(zenzefi_backend.__file__).parent


def imported_by(source: str, package: str) -> set[str]:
    """Every module a module of `package` imports, at the top or inside a function, as absolute dotted names."""
    parts = package.split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def imports_between(source: str, target: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import of package `target` by a module of package `source`."""
    found = []
    for path in sorted((PACKAGE / source).rglob("*.py")):
        package = ".".join(["zenzefi_backend", *path.relative_to(PACKAGE).parent.parts])
        found += [(str(path.relative_to(PACKAGE)), name)
                  for name in sorted(imported_by(path.read_text(encoding="utf-8"), package))
                  if name.startswith(f"zenzefi_backend.{target}.") or name == f"zenzefi_backend.{target}"]
    return found


def test_the_import_graph_reader_sees_every_kind_of_import():
    source = ("import zenzefi_backend.money\nfrom ..database import db\nfrom . import delivery\n"
              "def later():\n    from ..jobs.emails import send_email_job\n")
    assert imported_by(source, "zenzefi_backend.notifications") >= {
        "zenzefi_backend.money", "zenzefi_backend.database", "zenzefi_backend.notifications.delivery",
        "zenzefi_backend.jobs.emails", "zenzefi_backend.jobs.emails.send_email_job"}
    assert ("cli/jobs.py", "zenzefi_backend.jobs.queues") in imports_between("cli", "jobs")


def test_notifications_never_import_jobs():
    assert imports_between("notifications", "jobs") == []


def test_jobs_import_notifications_and_the_dotted_names_resolve():
    assert imports_between("jobs", "notifications")  # the direction that is allowed, and used
    for dotted in (email.CHANNEL.job, webhooks.CHANNEL.job, outbox.RELAY_JOB):
        module, _, function = dotted.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), dotted
