"""Joining an existing Ray cluster (cluster.ray_address) that uses Ray's token
authentication, as `ray start --head` sets one up: a plain `ray.init(address=...)` is
refused there with InvalidAuthToken (the failure users met); `start_ray` gets in and
runs a task. The head is a
process this test starts and stops by its id.

    python -m pytest tests/runtime/test_cluster.py -q
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")


def free_port() -> int:
    """A port free now (the process that binds it later may lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


pytestmark = pytest.mark.slow

JOIN = """
import sys, ray
from rlhf_exact.config.schema import ClusterConfig
from rlhf_exact.runtime.cluster import start_ray
start_ray(ClusterConfig(device="cpu", ray_address=sys.argv[1]))
print("ANSWER", ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


@pytest.fixture
def ray_head():
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rlhf_exact_test_head_", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "token"  # what a cluster admin sets up (Ray's token auth)
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={temp_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    yield f"localhost:{port}"  # Ray resolves it to this node's address, where `ray start` listens
    procs = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def join(address):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # a user's plain shell
    return subprocess.run([sys.executable, "-c", JOIN, address], capture_output=True, text=True, env=env,
                          timeout=180)


def test_join_a_cluster_with_token_auth(ray_head):
    from rlhf_exact.runtime.cluster import auth_token_available

    if not auth_token_available():
        pytest.skip("no Ray auth token on this machine (~/.ray/auth_token); `ray start --head` did not write one")
    deadline = time.time() + 120
    while True:  # the head takes a few seconds to come up
        p = join(ray_head)
        if p.returncode == 0 or time.time() > deadline:
            break
        time.sleep(2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ANSWER 42" in p.stdout
