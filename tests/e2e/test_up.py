"""`wabus up`: four service processes, ready and measured, stopped together."""

import asyncio
import os
import signal
import socket
import sys

import aiohttp

from tests.support import eventually

SERVICES = ("gateway", "processor", "scheduler", "notifier")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


async def _start_up(isolated, tmp_path):
    ports = dict(zip(SERVICES, _free_ports(len(SERVICES)), strict=True))
    env = {**isolated.env(), **{f"WABUS_{name.upper()}_PORT": str(port) for name, port in ports.items()}}
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed by the test
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "up", env=env,
                                                stdout=log, stderr=log)
    return proc, ports, log


async def _status(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def test_up_starts_four_ready_services_with_runtime_metrics_and_stops_them_on_ctrl_c(isolated, tmp_path,
                                                                                         processes):
    proc, ports, log = await _start_up(isolated, tmp_path)
    processes.append(proc)
    try:
        async with aiohttp.ClientSession() as http:
            for name, port in ports.items():
                await eventually(lambda port=port: _is(_status(http, f"http://127.0.0.1:{port}/readyz"), 200),
                                 timeout=60, what=f"{name} ready")
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                for metric in ("wabus_outbox_backlog", "wabus_outbox_oldest_age_seconds",
                               "wabus_events_published_total", "wabus_events_consumed_total",
                               "wabus_handler_duration_seconds", "wabus_event_retries_total",
                               "wabus_dead_letters_total"):
                    assert metric in text, f"{name} /metrics lacks {metric}"
                assert f'wabus_outbox_backlog{{service="{name}"}} 0.0' in text
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), timeout=60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    for port in ports.values():
        assert f"http://127.0.0.1:{port}" in output
    assert output.count('"msg": "service stopped"') == 4
    assert "wabus stopped." in output


async def test_up_stops_everything_when_one_service_dies(isolated, tmp_path, processes):
    proc, ports, log = await _start_up(isolated, tmp_path)
    processes.append(proc)
    try:
        async with aiohttp.ClientSession() as http:
            for port in ports.values():
                await eventually(lambda port=port: _is(_status(http, f"http://127.0.0.1:{port}/readyz"), 200),
                                 timeout=60)
        victim = _pid_listening_on(ports["processor"])
        os.kill(victim, signal.SIGKILL)
        code = await asyncio.wait_for(proc.wait(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 1
    assert "processor exited with status -9; stopping the others" in output
    assert output.count('"msg": "service stopped"') == 3


def _pid_listening_on(port: int) -> int:
    inode = None
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                inode = fields[9]
    assert inode is not None, f"nothing listens on {port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no process owns the socket on {port}")


async def _is(coro, expected) -> bool:
    return (await coro) == expected
