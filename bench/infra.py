"""Isolation and processes: a database and a vhost per run, subprocesses started and always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg

PG_ADMIN_DSN = "postgresql://127.0.0.1:5432/postgres"
AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672/"


def database_url(name: str) -> str:
    return f"postgresql://127.0.0.1:5432/{name}"


def amqp_url(vhost: str) -> str:
    return AMQP_BASE + vhost


def _rabbitmqctl(*args: str, timeout_s: float = 60) -> str:
    # Its own process group, so a hung call (su -> sh -> erl) is ended whole on timeout.
    proc = subprocess.Popen(["rabbitmqctl", "-q", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: no answer in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.strip() or out.strip()}")
    return out


def add_vhost(vhost: str) -> None:
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def delete_vhost(vhost: str) -> None:
    with contextlib.suppress(RuntimeError):
        if vhost in _rabbitmqctl("list_vhosts", "name").split():
            _rabbitmqctl("delete_vhost", vhost)


def rabbitmq_version() -> str:
    try:
        return _rabbitmqctl("version").strip()
    except (RuntimeError, OSError) as exc:
        return f"unknown ({exc})"


def broker_file_handles() -> tuple[int, int] | None:
    """(used, limit) of RabbitMQ's file handle cache, or None if it cannot be read.

    Every quorum queue holds some; when `used` reaches `limit`, starting a vhost blocks until
    handles are freed, and with it every later add_vhost. wabus's topology takes about 90.
    """
    try:
        out = _rabbitmqctl("eval", "file_handle_cache:info([total_used, total_limit]).", timeout_s=30)
    except (RuntimeError, OSError):
        return None
    numbers = [int(n) for n in re.findall(r"\d+", out)]
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def postgres_version() -> str:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        return await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()


# Names of everything a run creates start with these, then the run's pid: a run that was killed
# before it could clean up is recognised by its pid being gone, and swept by the next run.
VHOST_PREFIX = "wabus-bench-"
DATABASE_PREFIX = "wabus_bench_"


def run_names(tag: str, suffix: str = "") -> tuple[str, str]:
    """(vhost, database) for this process's run `tag`."""
    pid = os.getpid()
    return f"{VHOST_PREFIX}{pid}-{tag}{'-' + suffix if suffix else ''}", \
        f"{DATABASE_PREFIX}{pid}_{tag.replace('-', '_')}{'_' + suffix if suffix else ''}"


def _left_by_dead_run(name: str, prefix: str) -> bool:
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    pid = re.match(r"(\d+)[-_]", rest)
    return pid is not None and int(pid.group(1)) != os.getpid() and not _pid_alive(int(pid.group(1)))


async def sweep_leftovers() -> list[str]:
    """Delete vhosts and databases of benchmark runs whose process is gone."""
    swept = []
    for vhost in _rabbitmqctl("list_vhosts", "name").split():
        if _left_by_dead_run(vhost, VHOST_PREFIX):
            delete_vhost(vhost)
            swept.append(vhost)
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        names = [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")]
    finally:
        await conn.close()
    for name in names:
        if _left_by_dead_run(name, DATABASE_PREFIX):
            await drop_database(name)
            swept.append(name)
    return swept


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- processes ----------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every living descendant of pid, found through /proc (ppid links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


STARTED: list[Process] = []


def stop_all_left() -> list[str]:
    """Last resort at exit: end any process this run started that is still running."""
    left = [p for p in STARTED if p.alive()]
    for process in left:
        process.stop(signal.SIGTERM, 20)
    return [process.name for process in left]


class Process:
    """A subprocess in its own session, output to a log file; stopped by signal, then killed by pid.

    Descendants are remembered while it runs, because `wabus up` starts its services in sessions
    of their own: if it had to be killed, they are ended one by one, by pid.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid
        self.known_children: set[int] = set()
        STARTED.append(self)

    def remember_children(self) -> list[int]:
        found = children_of(self.pid)
        self.known_children.update(found)
        return found

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int, timeout_s: float) -> int | None:
        """Signal, wait, and kill what is left; returns the exit code (None if it had to be killed)."""
        if self.alive():
            self.remember_children()
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                code = self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=10)
                code = None
        else:
            code = self.popen.returncode
        deadline = time.monotonic() + 10
        for pid in sorted(self.known_children):
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid) and self._is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return code

    def _is_ours(self, pid: int) -> bool:
        # A pid can be reused: only kill it if it still runs something from this checkout.
        return any("bench" in part or "services.cli" in part or "celery" in part or "gunicorn" in part
                   for part in cmdline(pid))


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def wait_until(check: Callable[[], asyncio.Future[bool] | bool], *, timeout_s: float, what: str,
                     alive: Callable[[], bool] = lambda: True, every_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what}: the process exited (see its log)")
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return
        await asyncio.sleep(every_s)
    raise RuntimeError(f"{what}: not ready after {timeout_s:.0f} s")


async def http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
