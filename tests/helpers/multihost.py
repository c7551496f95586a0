"""A small lab of Linux network namespaces: one "host" per namespace, all on one switch.

The switch is a bridge in a namespace of its own, so the test changes nothing in the
machine's own network: every host namespace gets `lo` and an `eth0` (one end of a veth
pair) with an address in a private /24 that only this lab uses; the other end of each
pair is a port on the bridge. Cutting a host sets its switch port down: the host keeps
running, unaware, as when its cable is pulled.

Everything started here runs inside a lab namespace, so `teardown` can find and end it
by namespace (`ip netns pids`) even when a test fails half-way.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PREFIX = "dbmh-"  # every lab namespace is named dbmh-<pid of the test process>-<host>
SUBNET = "10.231.7"  # the lab's own /24, reachable only inside its namespaces


class LabError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def netns_unavailable() -> str | None:
    """Why this machine cannot build the lab (None when it can): tries one namespace."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}probe-{uuid.uuid4().hex[:8]}"
    proc = ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"`ip netns add` is not permitted here ({proc.stderr.strip()}); it needs root or CAP_SYS_ADMIN"
    ip("netns", "del", probe, check=False)
    return None


def namespace_pids(ns: str) -> list[int]:
    proc = ip("netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def remove_stale_labs() -> None:
    """Namespaces and database folders left by a lab whose test process died without
    cleaning up (kill -9): the pid in their name no longer runs."""
    listing = ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{re.escape(PREFIX)}(\d+)-", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _end_namespace(name)
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}*-pg-*")):
        m = re.search(rf"{re.escape(PREFIX)}(\d+)-pg-", folder)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _kill_all(ns: str) -> None:
    """SIGKILL whatever runs in the lab namespace `ns` (only lab processes can be there)."""
    for _ in range(50):
        pids = namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _end_namespace(ns: str) -> None:
    _kill_all(ns)
    ip("netns", "del", ns, check=False)


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    stop_signal: int
    service: bool


class Lab:
    """Namespaces `dbmh-<pid>-<host>` joined by the bridge in `dbmh-<pid>-net`."""

    def __init__(self, log_dir: Path) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, str] = {}  # host -> address
        self.namespaces: list[str] = []
        self.procs: list[Started] = []
        self.scratch: list[Path] = []
        self.cut_hosts: set[str] = set()
        self.switch = self.ns("net")

    def build(self, hosts: dict[str, int]) -> None:
        """The switch, then each host (name -> last octet of its address). Call `teardown`
        afterwards even when this raises: it removes whatever was made."""
        self._add_namespace("net")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "dev", "br0", "up")
        for host, octet in hosts.items():
            self.add_host(host, octet)

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def _add_namespace(self, host: str) -> str:
        name = self.ns(host)
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "dev", "lo", "up")
        return name

    def add_host(self, host: str, last_octet: int) -> str:
        """A new host on the switch; returns its address."""
        ns = self._add_namespace(host)
        port = f"p-{host}"
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
        ip("-n", self.switch, "link", "set", "dev", port, "master", "br0")
        ip("-n", self.switch, "link", "set", "dev", port, "up")
        address = f"{SUBNET}.{last_octet}"
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "dev", "eth0", "up")
        self.hosts[host] = address
        return address

    def cut(self, host: str) -> None:
        """Pull the host's cable: its switch port goes down, the host itself runs on."""
        ip("-n", self.switch, "link", "set", "dev", f"p-{host}", "down")
        self.cut_hosts.add(host)

    def spawn(
        self,
        host: str,
        argv: list[str],
        *,
        env: dict[str, str],
        name: str,
        hostname: str | None = None,
        stop_signal: int = signal.SIGTERM,
        pipes: bool = False,
        service: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Run `argv` on `host` (its network namespace; with `hostname`, also its own UTS
        namespace so `socket.gethostname()` names the host), output to `<name>.log`."""
        cmd = ["ip", "netns", "exec", self.ns(host)]
        if hostname is not None:
            # unshare and sh both exec: the process we start is the program itself.
            cmd += ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh"]
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd + argv,
            env=env,
            # With `pipes` the caller talks to it on stdin/stdout; stderr still goes to the log.
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else log,
            stderr=log if pipes else subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(Started(name, proc, log, stop_signal, service))
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else "(no log)"

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"--- {p.name} ---\n{self.log(p.name, tail)}" for p in self.procs)

    def teardown(self, grace: float = 10.0) -> None:
        """Stop what was started, clients before services so nothing logs a vanished
        database; end anything left in the lab's namespaces, then delete them (which
        removes every veth and the bridge)."""
        for host in self.cut_hosts:  # its workers wait on a dead network: no clean stop
            _kill_all(self.ns(host))
        for services in (False, True):
            group = [p for p in self.procs if p.service == services and p.proc.poll() is None]
            for p in group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, p.stop_signal)
            deadline = time.monotonic() + grace
            for p in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(max(0.1, deadline - time.monotonic()))
        for ns in reversed(self.namespaces):
            _end_namespace(ns)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(5)
            for stream in (p.proc.stdin, p.proc.stdout, p.log):
                if stream is not None:
                    stream.close()
        self.namespaces.clear()
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)

    # -- services -----------------------------------------------------------------------

    def start_postgres(self, host: str, port: int) -> None:
        """A throwaway PostgreSQL cluster listening on the host's address only, trusting
        the lab's /24 (nothing outside the lab can reach it)."""
        bindir = postgres_bindir()
        if bindir is None:
            raise LabError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        # Outside pytest's private tmp folder: the server runs as the postgres user.
        root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-pg-"))
        self.scratch.append(root)
        data, sockets = root / "data", root / "sockets"
        sockets.mkdir()
        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        init = subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if init.returncode != 0:
            raise LabError(f"initdb failed: {init.stderr.strip()}")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200"]
        argv = [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                "-h", self.hosts[host], "-k", str(sockets)]  # fmt: skip
        for setting in settings:
            argv += ["-c", setting]
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
        self.spawn(host, argv, env=dict(os.environ), name="postgres", stop_signal=signal.SIGINT, service=True)

    def start_redis(self, host: str, port: int) -> None:
        argv = ["redis-server", "--port", str(port), "--bind", self.hosts[host], "--save", "",
                "--appendonly", "no", "--protected-mode", "no"]  # fmt: skip
        self.spawn(host, argv, env=dict(os.environ), name="redis", service=True)

    def start_moto(self, host: str, port: int, moto_server: str) -> None:
        argv = [moto_server, "-H", self.hosts[host], "-p", str(port)]
        self.spawn(host, argv, env=dict(os.environ), name="s3", service=True)


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> float:
    m = re.search(r"/postgresql/([\d.]+)/", path)
    return float(m.group(1)) if m else 0.0
