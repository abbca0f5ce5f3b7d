"""Several gateway hosts behind nginx, as deploy/nginx/whatsapp-gateway.conf ships it.

Two gateway processes on their own ports stand for two hosts sharing one Redis; nginx runs the
shipped site file with their addresses. Sessions made through either are placed once and
evenly, an idempotency key holds across them, and a host that dies costs no read.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from dev.ports import free_port
from tests.harness import API_KEY, ROOT, wait_healthy
from tests.spawned import Spawned, gateway_env
from tests.support import unavailable

SITE = ROOT / "deploy" / "nginx" / "whatsapp-gateway.conf"


def nginx_conf(tmp: Path, listen: int, gateways: list[int]) -> Path:
    """The shipped site file, with these gateways and this port, in a main file of its own."""
    site = SITE.read_text()
    servers = "".join(
        f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n" for port in gateways
    )
    site, found = re.subn(r"(?m)^    server \S+:\d+[^\n]*\n", "", site)
    assert found == 2, "the shipped file names two example hosts"
    site = site.replace(
        "upstream whatsapp_gateways {\n", "upstream whatsapp_gateways {\n" + servers
    )
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    (tmp / "site.conf").write_text(site)
    main = tmp / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
        f"  proxy_temp_path {tmp}/proxy;\n  include {tmp}/site.conf;\n}}\n"
    )
    return main


@pytest.fixture
def nginx() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if path is None:
        unavailable("nginx not found: install Debian's nginx package (.ci/run does)")
    return path


async def test_two_gateway_hosts_behind_nginx_share_every_session(
    nginx, simulators, redis_prefix, tmp_path, http: aiohttp.ClientSession
):
    sims = await simulators(2)
    ports = [free_port(), free_port()]
    env = gateway_env([s.url for s in sims], redis_prefix)
    hosts = [await Spawned.start("gateway", env={**env, "GATEWAY_PORT": str(p)}) for p in ports]
    listen = free_port()
    proxy = await asyncio.create_subprocess_exec(
        *(nginx, "-p", str(tmp_path), "-c", str(nginx_conf(tmp_path, listen, ports))),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    front = f"http://127.0.0.1:{listen}"
    try:
        for port in ports:
            await wait_healthy(http, f"http://127.0.0.1:{port}")
        await wait_healthy(http, front)

        async def create(sid: str) -> str:
            body = {"session_id": sid, "api_key": API_KEY}
            async with http.post(f"{front}/api/sessions", json=body) as r:
                assert r.status == 200, await r.text()
                return r.headers["X-WhatsApp-Instance"]

        # the same ids created twice at once, through whichever host nginx picks
        ids = [f"multi-{i}" for i in range(20)]
        owners = await asyncio.gather(*(create(sid) for sid in ids + ids))
        for sid, first, again in zip(ids, owners[:20], owners[20:], strict=True):
            assert first == again, sid
            assert [s.url for s in sims if sid in s.sessions] == [first]
        spread = Counter(owners[:20])
        assert max(spread.values()) - min(spread.values()) <= 1

        # one idempotency key across hosts: the repeat is answered, not sent
        send = {"session_id": "multi-0", "api_key": API_KEY, "recipient_phone": "1", "message": "x"}
        headers = {"Idempotency-Key": "multi-host:1"}
        replayed = []
        for _ in range(4):
            async with http.post(f"{front}/api/messages/send", json=send, headers=headers) as r:
                assert r.status == 200
                replayed.append(r.headers.get("Idempotent-Replayed"))
        assert replayed == [None, "true", "true", "true"]
        assert sum(len(s.calls("/api/messages/send")) for s in sims) == 1

        # a host dies: every read still answers, through the other
        hosts[0].signal(signal.SIGKILL)
        for i in range(60):
            sid = ids[i % len(ids)]
            async with http.get(f"{front}/api/sessions/{sid}/status?api_key={API_KEY}") as r:
                assert r.status == 200, (i, await r.text())
    finally:
        proxy.send_signal(signal.SIGQUIT)
        await asyncio.wait_for(proxy.wait(), 10)
        for host in hosts:
            await host.stop()
