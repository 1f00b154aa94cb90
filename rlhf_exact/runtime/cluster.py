"""Ray for one run: start a private local Ray, or join an existing cluster, and leave no
process or directory behind.

    from rlhf_exact.runtime.cluster import start_ray
    start_ray(cfg.cluster)          # before any actor; a no-op when Ray is already up

Local (cluster.ray_address null): `ray.init` on cluster.ray_host with a temp dir of its
own, /tmp/rlhf_exact_ray_XXXXXXXX (not /tmp/ray), and a watcher process started first,
in a session of its own so that it outlives the driver:

    python -m rlhf_exact.runtime.cluster --watch DRIVER_PID TEMP_DIR

Every half second it records Ray's processes: the driver's children that belong to this
Ray (their command lines name TEMP_DIR: GCS, raylet, monitors) and all their descendants
(agents, workers, the vLLM engine processes of the sampler actors). When the driver is
gone, however it ended (return, exception, Ctrl-C, SIGTERM, SIGKILL), it terminates what is still
alive of them (SIGTERM, SIGKILL after 5 s) and deletes TEMP_DIR. Ray alone stops its head
with the driver but leaves agents running for minutes after a killed driver, and never
deletes its session directories.

Existing cluster (cluster.ray_address, e.g. "127.0.0.1:6379" or "auto"): Ray 2.60 clusters
use token authentication by default, but a driver given an explicit address does not turn
it on by itself (InvalidAuthToken). When RAY_AUTH_MODE is not set and a token is at hand
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, which `ray start --head`
writes), RAY_AUTH_MODE=token is set for this process and its children. The cluster's
processes are its own: nothing is stopped or deleted at exit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("rlhf_exact")
TEMP_PREFIX = "rlhf_exact_ray_"


def auth_token_available() -> bool:
    """A Ray auth token in one of the places Ray reads it from."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def start_ray(cluster) -> str | None:
    """Start (or join) Ray per `cluster` (a ClusterConfig); returns the local temp dir, or
    None when joining a cluster or when Ray was already initialized."""
    import ray

    if ray.is_initialized():
        return None
    with _keep_sigterm_handler():
        return _init(ray, cluster)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init replaces the driver's SIGTERM handler with its own, which exits at once and
    skips the run's clean-up; the caller's handler is put back, so a SIGTERM stops a run
    the way its entry point says (train.py: like Ctrl-C)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _init(ray, cluster) -> str | None:
    kw = dict(include_dashboard=cluster.ray_dashboard, log_to_driver=True, logging_level=logging.WARNING)
    if cluster.ray_address:
        if "RAY_AUTH_MODE" not in os.environ and auth_token_available():
            # What ray.init does for address="auto" but not for an explicit address: set
            # RAY_AUTH_MODE=token and make Ray's already-loaded C++ config read it again.
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        ray.init(address=cluster.ray_address, **kw)
        return None
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp")  # short: Ray's socket paths live under it
    subprocess.Popen([sys.executable, "-m", "rlhf_exact.runtime.cluster", "--watch", str(os.getpid()), temp_dir],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)
    ray.init(_node_ip_address=cluster.ray_host, num_cpus=cluster.num_cpus, num_gpus=cluster.num_gpus,
             _temp_dir=temp_dir, runtime_env={"env_vars": {"RAY_DEDUP_LOGS": "1"}}, **kw)
    return temp_dir


def _cmdline(p) -> str:
    import psutil

    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def watch(driver_pid: int, temp_dir: str, interval_s: float = 0.5, grace_s: float = 5.0) -> None:
    """The watcher's body (module docstring)."""
    import psutil

    seen: dict[int, psutil.Process] = {}
    try:
        driver = psutil.Process(driver_pid)
        while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
            for child in driver.children():
                if child.pid != os.getpid() and (child.pid in seen or temp_dir in _cmdline(child)):
                    seen.setdefault(child.pid, child)
                    try:
                        for p in child.children(recursive=True):
                            seen.setdefault(p.pid, p)
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(interval_s)
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():  # started after the last look, or orphaned before it
        if p.pid != os.getpid() and temp_dir in _cmdline(p):
            seen.setdefault(p.pid, p)
    alive = [p for p in seen.values() if p.is_running()]  # is_running also compares the start time
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--watch":
        sys.exit("usage: python -m rlhf_exact.runtime.cluster --watch DRIVER_PID TEMP_DIR")
    watch(int(sys.argv[2]), sys.argv[3])
