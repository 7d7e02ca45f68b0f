"""Running a submission where it cannot reach the grade (docs/grading.md, "Isolation").

With bubblewrap (``bwrap``, Debian package ``bubblewrap``) each submission's process sees

* the whole file system **read-only** (``--ro-bind / /``), with the submissions folder, the
  snapshots, the output folder, the reference and the grading config hidden (an empty tmpfs over
  a folder, ``/dev/null`` over a file);
* its own copy of its submission at ``/tmp/submission`` (written from the grader's snapshot just
  before it runs, thrown away after), a private ``/tmp``, its own ``/proc`` and ``/dev``;
* no network and no other process (``--unshare-all``), a new session (no terminal), and it dies
  with the grader (``--die-with-parent``).

Without a working ``bwrap`` the same program runs as a plain subprocess in a private copy with an
empty environment and the same resource limits, and ``WEAK_ISOLATION_WARNING`` is printed: such a
process could read or write whatever the grader's user can.

In both cases the process sets on itself, before any student code runs: an address-space limit
(``memory_mb``), a CPU-time limit, a 64 MB file-size limit, no core dumps; the grader enforces a
wall-clock ``timeout`` over the whole conversation and keeps at most ``output_cap`` bytes of what
it prints (the rest is counted and dropped).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .child import LAUNCHER
from .protocol import ProtocolError, read_message, write_message

__all__ = ["Sandbox", "Child", "bwrap_works", "WEAK_ISOLATION_WARNING"]

WEAK_ISOLATION_WARNING = (
    "WARNING: bubblewrap (bwrap) is not installed or cannot create namespaces here: student code runs in "
    "plain subprocesses with resource limits and a private copy only. Isolation is WEAKER: a submission can "
    "read and write any file the grader's user can and signal its processes. Install bubblewrap (Debian/Ubuntu: "
    "apt-get install bubblewrap) and allow user namespaces to grade untrusted code.")

_BWRAP_STATE = {}
#: where the submission's copy appears inside bubblewrap (under its private /tmp: the root is read-only)
SANDBOX_DIR = "/tmp/submission"


def bwrap_works():
    """True when ``bwrap`` exists and can start a process in new namespaces here (tested once)."""
    if "ok" not in _BWRAP_STATE:
        path = shutil.which("bwrap")
        ok = False
        if path:
            try:
                r = subprocess.run([path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
                                    "--die-with-parent", "--", "/bin/true"], capture_output=True, timeout=30)
                ok = r.returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        _BWRAP_STATE["ok"] = ok
    return _BWRAP_STATE["ok"]


def _package_root():
    import nn_from_scratch
    return os.path.dirname(os.path.dirname(os.path.abspath(nn_from_scratch.__file__)))


class Child:
    """One running submission: ``request(header, arrays)``; ``close()`` -> ``(status, output text)``."""

    def __init__(self, proc, deadline, output_cap, workdir):
        self.proc, self.deadline, self.cap, self.workdir = proc, deadline, output_cap, workdir
        self._out, self._seen, self.timed_out = bytearray(), 0, False
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._seen += len(chunk)
            room = self.cap - len(self._out)
            if room > 0:
                self._out += chunk[:room]

    def request(self, header, arrays=None):
        """Send one request and read the answer; ``TimeoutError`` past the deadline, ``ProtocolError`` when
        the process is gone or answered garbage."""
        if time.monotonic() >= self.deadline:
            self.timed_out = True
            raise TimeoutError("time limit reached")
        try:
            write_message(self.proc.stdin.fileno(), header, arrays, self.deadline)
            return read_message(self.proc.stdout.fileno(), self.deadline)
        except TimeoutError:
            self.timed_out = True
            raise
        except (BrokenPipeError, OSError) as exc:
            raise ProtocolError(f"the process is gone ({type(exc).__name__})") from None

    def close(self):
        """Stop the process (politely, then by force); ``(returncode, output, bytes printed)``."""
        try:
            if self.proc.poll() is None and not self.timed_out:
                try:
                    write_message(self.proc.stdin.fileno(), {"op": "bye"}, deadline=time.monotonic() + 1)
                except (OSError, TimeoutError):
                    pass
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.proc.kill()
            self.proc.wait()
            self._reader.join(timeout=5)
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            shutil.rmtree(self.workdir, ignore_errors=True)
        text = bytes(self._out).decode("utf-8", "replace")
        if self._seen > len(self._out):
            text += f"\n[... {self._seen - len(self._out)} more bytes of output dropped (cap {self.cap} bytes)]"
        return self.proc.returncode, text, self._seen


class Sandbox:
    """How submissions run: ``start(files)`` writes a private copy of ``files`` (relative path -> bytes) and
    starts the child there.  ``isolation`` is ``"bwrap"`` or ``"rlimits"``; ``hide``: paths the child must
    not see (folders or files)."""

    def __init__(self, timeout=60.0, memory_mb=1024, output_cap=64 * 1024, hide=(), isolation=None):
        self.timeout, self.memory_mb, self.output_cap = float(timeout), int(memory_mb), int(output_cap)
        if isolation is None:
            isolation = "bwrap" if bwrap_works() else "rlimits"
        if isolation not in ("bwrap", "rlimits"):
            raise ValueError(f"isolation must be 'bwrap' or 'rlimits', received {isolation!r}")
        self.isolation = isolation
        self.root = tempfile.mkdtemp(prefix="nnfs-grading-")
        self.hide = [os.path.abspath(p) for p in hide if p and os.path.exists(p)] + [self.root]
        self.package_root = _package_root()

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _limits(self):
        mem = self.memory_mb * 1024 * 1024 if self.memory_mb > 0 else -1
        return [str(mem), str(int(self.timeout) + 2), str(64 * 1024 * 1024)]

    def _env(self, home):
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}

    def _command(self, copy):
        if self.isolation == "rlimits":
            return [sys.executable, "-I", "-c", LAUNCHER, self.package_root] + self._limits() + [copy], copy
        cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
               "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        needed = [self.package_root, sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))]
        dirs = [p for p in self.hide if os.path.isdir(p)]
        for path in self.hide:
            if any(n == path or n.startswith(path.rstrip("/") + "/") for n in needed):
                continue            # never hide the framework or the interpreter (the root stays read-only)
            if any(path != d and path.startswith(d.rstrip("/") + "/") for d in dirs):
                continue            # inside a hidden folder already (a mount point there would show its name)
            if os.path.isdir(path):
                cmd += ["--tmpfs", path]
            else:
                cmd += ["--ro-bind", "/dev/null", path]
        cmd += ["--bind", copy, SANDBOX_DIR, "--chdir", SANDBOX_DIR, "--clearenv"]
        for k, v in self._env("/tmp").items():
            cmd += ["--setenv", k, v]
        cmd += ["--", sys.executable, "-I", "-c", LAUNCHER, self.package_root] + self._limits() + [SANDBOX_DIR]
        return cmd, SANDBOX_DIR

    def start(self, files):
        """Write ``files`` into a fresh private folder and start the child there; returns a ``Child``."""
        run = tempfile.mkdtemp(prefix="run-", dir=self.root)
        copy = os.path.join(run, "submission")
        home = os.path.join(run, "home")
        os.makedirs(home)
        for rel, data in files.items():
            path = os.path.join(copy, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        os.makedirs(copy, exist_ok=True)
        cmd, _ = self._command(copy)
        env = self._env(home)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=copy, env=env, start_new_session=True, close_fds=True)
        return Child(proc, time.monotonic() + self.timeout, self.output_cap, run)
