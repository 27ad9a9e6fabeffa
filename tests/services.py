"""Services the scale tests start themselves, on this machine only, and stop at the end: a Ray
head node (``ray start --head --block``, dashboard off) and a PostgreSQL
server from Debian's ``postgresql`` package (``make postgres`` installs it) in a temporary
directory, listening on 127.0.0.1 and a private socket directory, run as an unprivileged user
when the tests run as root (CI). Each is stopped by the process id it was started with.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0


class Unavailable(RuntimeError):
    """The service cannot run here (the reason says what to install)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a service we started: ``sig`` to its process, then SIGKILL to its own group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group it leads (start_new_session)
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class RayHead:
    address: str
    env: dict[str, str]
    """What a driver needs in its environment to connect."""


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """A Ray head node of ``num_cpus`` CPUs and no GPU, its dashboard off."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        raise Unavailable("Ray is not installed: pip install 'sdpalab[scale]'")
    root = Path(tempfile.mkdtemp(prefix="sdpalab-ray-"))  # short: Ray's sockets live here
    port = free_port()
    # Ray reads its token settings once per process, so a test process that imported ray
    # before the head existed could not join a token-authenticated one
    env = {"RAY_AUTH_MODE": "disabled"}
    command = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--object-store-memory={100 * 2**20}",
        f"--temp-dir={root}",
    ]
    log = (root / "head.log").open("wb")
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env, "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_ray(address, env, proc, root)
        yield RayHead(address, env)
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_ray(address: str, env: dict[str, str], proc: subprocess.Popen, root: Path) -> None:
    probe = (
        f"import logging, ray; ray.init(address={address!r}, log_to_driver=False, "
        "logging_level=logging.ERROR); ray.shutdown()"
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"ray start exited: {(root / 'head.log').read_text()[-500:]}")
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, **env},
            capture_output=True,
            timeout=60,
        )
        if done.returncode == 0:
            return
        time.sleep(0.5)
    raise Unavailable(f"the Ray head did not answer within {START_TIMEOUT_S:g} s")


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class Postgres:
    url: str
    """``postgresql://sdpalab:PASSWORD@127.0.0.1:PORT/postgres``."""
    password: str


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise Unavailable("PostgreSQL's server is not installed (`make postgres` installs it)")


def _service_user() -> tuple[int, int] | None:
    """Who runs the server: ``nobody`` when we are root (postgres refuses root), else us."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("nobody")
    return user.pw_uid, user.pw_gid


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server with one password-protected user ``sdpalab``, on 127.0.0.1."""
    try:
        import psycopg
    except ImportError:
        raise Unavailable("psycopg is not installed: pip install 'sdpalab[scale]'") from None
    bindir = _pg_bindir()
    owner = _service_user()
    root = Path(tempfile.mkdtemp(prefix="sdpalab-pg-"))
    password = secrets.token_urlsafe(18)
    pwfile, data, sockets = root / "pw", root / "data", root / "sockets"
    pwfile.write_text(password + "\n")
    sockets.mkdir()
    as_user: dict = {}
    if owner is not None:
        for path in (root, pwfile, sockets):
            os.chown(path, *owner)
        as_user = {"user": owner[0], "group": owner[1], "extra_groups": []}
    pwfile.chmod(0o600)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "sdpalab",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        **as_user,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise Unavailable(f"initdb failed: {init.stderr.strip()[-300:]}")
    pwfile.unlink()
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",  # loopback only
            "-k",
            str(sockets),
            "-c",
            "fsync=off",
            "-c",
            "max_connections=40",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        start_new_session=True,
        **as_user,
    )
    url = f"postgresql://sdpalab:{password}@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(
                        f"postgres did not start: {(root / 'server.log').read_text()[-300:]}"
                    ) from None
                time.sleep(0.2)
        yield Postgres(url, password)
    finally:
        _stop(proc, signal.SIGINT)  # postgres' fast shutdown
        log.close()
        shutil.rmtree(root, ignore_errors=True)
