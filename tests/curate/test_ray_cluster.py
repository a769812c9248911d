"""`curate --engine ray --ray-address HOST:PORT` joins a running cluster (issue 17 item 3).

The test starts a two-node Ray cluster on 127.0.0.1 the way the README shows (`ray start
--head`, then `ray start --address` for the second node), curates the same corpus there and
with the local engine, compares the kept and removed documents, and stops what it started.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import _lines, corpus

from llm4all.curate.pipeline import main as curate
from llm4all.errors import UserError

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                    *args], check=True, capture_output=True, env=env, timeout=180)


def test_ray_address_needs_the_ray_engine(tmp_path):
    path, _ = corpus(tmp_path)
    with pytest.raises(UserError, match="--ray-address joins a Ray cluster for --engine ray"):
        curate([path], out=tmp_path / "o", ray_address="auto", signals=["ttr"], steps=[])


@pytest.mark.slow
def test_curate_on_a_two_node_cluster_equals_the_local_engine(tmp_path):
    """The CLI joins the cluster in a process of its own: Ray reads RAY_AUTH_MODE when imported,
    and `ray start --head` turns token authentication on (the token is in ~/.ray/auth_token)."""
    ray = pytest.importorskip("ray")
    from llm4all.curate import engine

    # this process's own local Ray (an earlier test's) ends first: `ray stop` below would kill its
    # raylet, and a driver whose raylet dies exits
    ray.shutdown()
    engine._RAY["connected"] = None
    path, _ = corpus(tmp_path)
    options = ["--signals", "ttr", "gopher_quality", "--shard-docs", "10", "--lang-id", "meta"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    address = f"127.0.0.1:{free_port()}"
    start("--head", f"--port={address.split(':')[1]}", "--include-dashboard=false")
    try:
        start(f"--address={address}")
        llm4all = [sys.executable, "-m", "llm4all"]
        local = subprocess.run([*llm4all, "curate", str(path), "--out", str(tmp_path / "local"),
                                "--workers", "1", *options], capture_output=True, text=True, env=env,
                               timeout=300)
        assert local.returncode == 0, local.stderr
        deadline = time.time() + 60
        while time.time() < deadline:  # the second node registers within seconds
            cluster = subprocess.run([*llm4all, "curate", str(path), "--out", str(tmp_path / "cluster"),
                                      "--engine", "ray", "--ray-address", address, *options],
                                     capture_output=True, text=True, env=env, timeout=300)
            assert cluster.returncode == 0, cluster.stderr
            ray_stats = json.loads((tmp_path / "cluster" / "summary.json").read_text())["engine_stats"]["ray"]
            if ray_stats["nodes"] == 2:
                break
            time.sleep(2)
        assert ray_stats == {"address": address, "nodes": 2, "cpus": 2}
        for name in ("kept.jsonl.zst", "removed.jsonl.zst"):
            assert _lines(tmp_path / "local" / name) == _lines(tmp_path / "cluster" / name)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
