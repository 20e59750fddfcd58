"""TVM RPC plumbing: the tracker address a user gives, the keys servers register, and
``LoopbackRPC``, a real tracker and servers (``python -m tvm.exec.rpc_tracker`` / ``rpc_server``) on
127.0.0.1, for tests and for aarch64 servers under qemu-user. Profiling (targets.profile) and tuning
on a remote runner (targets.tune) both use it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from tvmptq.errors import ConfigError, TvmptqError


class RPCError(TvmptqError):
    exit_code = 4


def server_keys(session) -> set:
    """Keys that servers registered at the tracker offer (whether busy or free)."""
    info = session.summary().get("server_info", [])
    return {e["key"].split(":", 1)[1] if ":" in e["key"] else e["key"] for e in info}


def parse_tracker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--rpc-tracker expects HOST:PORT, got {text!r}")
    return host, int(port)


# ------------------------------------------------------------------------------ loopback tracker
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RPCError(f"RPC process exited early with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RPCError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class LoopbackRPC:
    """A real RPC tracker plus servers on 127.0.0.1, torn down on exit (only the processes it started).

        with LoopbackRPC() as rpc:
            rpc.add_server("x86-host")                       # this machine's python
            rpc.add_server("cortex-a72", qemu=True)          # aarch64 python under qemu-user
            profile_artifact(..., tracker=rpc.tracker, key="x86-host")
    """

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self.procs: list[subprocess.Popen] = []
        self.port = None

    @property
    def tracker(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self):
        self.port = free_port()
        p = subprocess.Popen([self.python, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                              str(self.port), "--port-end", str(self.port + 1), "--silent"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        _wait_port(self.port, p, 30)
        return self

    def add_server(self, key: str, qemu: bool = False, timeout: float = 120, log=None) -> None:
        """Start an RPC server registered under ``key``; ``log``: a file for its output (it logs
        every session it serves), else discarded."""
        port = free_port()
        args = ["--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1),
                "--tracker", self.tracker, "--key", key]
        env = dict(os.environ)
        if qemu:
            from .qemu import _python
            py = _python()
            # the server forks popen workers with sys.executable: point it at the qemu wrapper
            code = (f"import sys, runpy; sys.executable = {py!r}; sys.argv = ['rpc_server'] + {args!r}; "
                    "runpy.run_module('tvm.exec.rpc_server', run_name='__main__')")
            cmd = [py, "-c", code]
        else:
            cmd = [self.python, "-m", "tvm.exec.rpc_server"] + args
        # own session: the server forks popen workers, which teardown must end with it (by group id)
        sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it open
        p = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT if log else subprocess.DEVNULL, env=env,
                             start_new_session=True)
        self.procs.append(p)
        _wait_port(port, p, timeout)
        self.wait_for_key(key, timeout)

    def wait_for_key(self, key: str, timeout: float = 60) -> None:
        import tvm
        host, port = parse_tracker(self.tracker)
        t0 = time.time()
        while time.time() - t0 < timeout:
            summary = tvm.rpc.connect_tracker(host, port).summary()
            if any(q.get("free", 0) for k, q in summary.get("queue_info", {}).items() if k == key):
                return
            time.sleep(0.5)
        raise RPCError(f"no server registered key {key!r} at {self.tracker} within {timeout:.0f} s")

    def __exit__(self, *exc):
        import signal
        for p in reversed(self.procs):  # each started in its own session: its group is only its tree
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        return False
