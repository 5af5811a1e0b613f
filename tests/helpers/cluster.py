"""A real two-node MQTT cluster on loopback: aedes nodes (from aedes-cli, installed by ``scripts/bootstrap.sh``
into ``deploy/cluster/node_modules``) sharing retained messages, sessions and routing through Debian's
redis-server. Boards connect to one node, the host to another, as they would to an EMQX or HiveMQ cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .broker import free_port
from .processes import listening, terminate

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster"
AEDES = CLUSTER / "node_modules" / ".bin" / "aedes"


class Node:
    """One aedes node, stoppable and restartable on its port (a node going away)."""

    def __init__(self, workdir: Path, name: str, redis_port: int) -> None:
        self.name, self.port, self.workdir, self.redis_port = name, free_port(), workdir, redis_port
        self.process: subprocess.Popen | None = None

    def start(self) -> Node:
        env = {**os.environ, "EDGEC_MQTT_PORT": str(self.port), "EDGEC_NODE_ID": self.name,
               "EDGEC_REDIS_PORT": str(self.redis_port)}
        log = self.workdir / f"{self.name}.log"
        self.process = subprocess.Popen([str(AEDES), "-c", str(CLUSTER / "aedes.config.js")], env=env,
                                        stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=CLUSTER)
        listening(self.port, self.process, 30, log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None


class AedesCluster:
    """``redis-server`` and ``nodes`` aedes nodes joined through it.

    Raises:
        RuntimeError: redis-server, node or the aedes packages are missing (``scripts/bootstrap.sh``).
    """

    def __init__(self, workdir: Path, nodes: int = 2) -> None:
        redis = shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server",) if Path(p).exists()), None)
        if redis is None or shutil.which("node") is None or not AEDES.exists():
            raise RuntimeError("the MQTT cluster needs redis-server, node and aedes-cli: run scripts/bootstrap.sh "
                               "(apt-get install redis-server nodejs npm; npm ci --prefix deploy/cluster)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_binary, self.redis_port = redis, free_port()
        self.redis: subprocess.Popen | None = None
        self.nodes = [Node(self.workdir, f"node-{i + 1}", self.redis_port) for i in range(nodes)]

    def start(self) -> AedesCluster:
        self.redis = subprocess.Popen([self.redis_binary, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                                      stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        listening(self.redis_port, self.redis, 10, self.workdir / "redis.log")
        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            terminate(self.redis)
        self.redis = None
