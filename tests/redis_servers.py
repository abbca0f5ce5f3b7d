"""Redis servers a test starts on loopback ports: a Sentinel topology, a Redis Cluster
(the fixtures ``topology`` and ``cluster`` in tests/conftest.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from dev.ports import free_port

SERVICE = "wa-test"


@dataclass
class Topology:
    primary: int
    replica: int
    sentinels: tuple[int, ...]  # three, quorum two: as production runs them
    processes: list[subprocess.Popen[bytes]]  # primary, replica, sentinels
    dir: Path

    def start_replica(self) -> subprocess.Popen[bytes]:
        """Start the replica (again), following the first primary; stopped with the rest."""
        proc = server(
            "--port", str(self.replica), *_plain(self.dir),
            "--replicaof", "127.0.0.1", str(self.primary),
        )  # fmt: skip
        self.processes.append(proc)
        return proc

    def replica_up(self) -> bool:
        return self.client(self.replica).info("replication")["master_link_status"] == "up"

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def fail_over(self) -> str:
        """Have Sentinel promote the replica (once it has a fresh word from it); its
        ``host:port``."""
        sentinel = self.client(self.sentinels[0])

        def failover() -> bool:
            try:
                return bool(sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE))
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" in str(exc):
                    return False
                raise

        until(failover, what="a failover")
        return f"127.0.0.1:{self.replica}"


def _plain(tmp: Path) -> tuple[str, ...]:
    """A server's options for a test: loopback only, nothing written to disk but in ``tmp``."""
    return ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp))


def server(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def until(check: Callable[[], object], timeout: float = 20.0, what: str = "servers") -> None:
    """Poll ``check`` until it is true (Redis errors count as not yet), for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: did not come up")
        time.sleep(0.05)


def start_topology(tmp_path: Path) -> Iterator[Topology]:
    """Start a primary, its replica and three Sentinels watching them (service ``SERVICE``,
    quorum 2), each knowing the others; stop them afterwards."""
    primary, replica = free_port(), free_port()
    sentinels = (free_port(), free_port(), free_port())
    procs = [server("--port", str(primary), *_plain(tmp_path))]
    top = Topology(primary, replica, sentinels, procs, tmp_path)
    top.start_replica()
    for port in sentinels:
        conf = tmp_path / f"sentinel-{port}.conf"  # each rewrites its own file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        procs.append(server(str(conf), "--sentinel"))

    def all_known(port: int) -> bool:
        sentinel = top.client(port)
        others = sentinel.execute_command("SENTINEL", "SENTINELS", SERVICE)
        return len(others) == 2 and bool(sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE))

    try:
        until(top.replica_up)
        for port in sentinels:
            until(lambda port=port: all_known(port), what="three Sentinels that know each other")
        yield top
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@dataclass
class Cluster:
    """Three primaries of one Redis Cluster (no replicas), every slot assigned."""

    ports: list[int]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]


def start_cluster(tmp: Path) -> Iterator[Cluster]:
    """Start the three nodes, join them with ``redis-cli --cluster create``, wait until
    every node says the cluster is ok; stop them afterwards."""
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            procs.append(
                server(
                    "--port", str(port), *_plain(tmp), "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                )
            )  # fmt: skip
        for port in ports:
            until(lambda port=port: redis.Redis(port=port).ping(), what="cluster nodes")
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for port in ports:
            until(
                lambda port=port: redis.Redis(port=port).cluster("info")["cluster_state"] == "ok",
                what="the cluster",
            )
        yield Cluster(ports)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
