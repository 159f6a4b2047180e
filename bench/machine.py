"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from . import infra

PACKAGES = ("aiohttp", "aio-pika", "asyncpg", "celery", "flask", "gunicorn", "psycopg")


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _git(root: Path, *args: str) -> str:
    # read-only: --no-optional-locks keeps `status` from rewriting the index
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True,
                              timeout=10)
        return done.stdout.strip()
    except OSError:
        return ""


def _commit(root: Path) -> str:
    commit = _git(root, "rev-parse", "--short", "HEAD") or "unknown"
    changed = _git(root, "status", "--porcelain", "--", "services", "shared", "pyproject.toml", "uv.lock")
    return f"{commit} + uncommitted changes in services/ or shared/" if changed else commit


async def describe(root: Path) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": await infra.postgres_version(),
        "rabbitmq": infra.rabbitmq_version(),
        "packages": versions,
        "commit": _commit(root),
    }
