"""Warm Python: start a run from a fresh copy of a pre-initialised interpreter (SPEC §10).

A template is a Python interpreter started by evalbox itself (clean environment, its own session,
killed with its caller) that imports a set of modules once and never runs user code. For each run
evalbox sends it the run's prepared Lockdown and stdio; the template forks a copy whose parent is
this process (CLONE_PARENT: waited for, killed and accounted like a cold spawn), the copy applies
the same lockdown in place (`_spawn.lockdown_self`), makes itself look like `python -s main.py`
just started, and runs the script. No process serves two runs.

On hosts that jail every run (SPEC §4.9) the template starts a jailed run with `_spawn.fork_jail`:
an init that shares the template's memory and runs no Python is cloned into the jail's new
namespaces as their PID 1 (reaping, the same reports as a cold jail's); the copy it forks at once (PID 2)
builds the jail (the same C code as a cold init: network, root, /proc), locks down and runs the
script (`_spawn.lockdown_self` with jail_flags).

A run goes cold instead (same Output, `Output.warm` False) when the plan needs what a copy
cannot give: notify modes (the audit trail would miss the interpreter's start-up), PYTHON* (but
PYTHONUNBUFFERED), LANG or LC_* variables in `env` (they act at interpreter start-up), or an
interpreter that cannot load evalbox's extension (another Python version). See README "Warm
Python".

Resident slots (class Slot) live here too: on v1 cgroup hosts a copy of a template joins a slot's
cgroup once and starts that slot's runs inside it (warm copies, or cold programs by clone + exec,
in a jail by cloning the cold init),
so no run migrates into a v1 cgroup. EVALBOX_SLOTS=0 turns them off; EVALBOX_WARM_DEBUG=1 lets
templates write to the caller's stderr (their own failures).
"""

from __future__ import annotations

import itertools
import marshal
import os
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from evalbox.errors import SandboxError
from evalbox.kernel import _spawn
from evalbox.kernel import capabilities as caps
from evalbox.kernel import cgroups
from evalbox.policy.plan import NotifyMode, Plan
from evalbox.process.host import Host
from evalbox.process import netns
from evalbox.process.lockdown import UMASK, Lockdown

IDLE_SLOTS = max(8, 4 * (os.cpu_count() or 1))  # idle slots kept per template (run_many at 8 makes none anew)
START_TIMEOUT = 60.0
# Start-up variables a warm copy applies itself (warm_template.py); any other PYTHON* runs cold.
WARM_ENV = frozenset({"PYTHONUNBUFFERED"})  # seconds for a template to import its modules and report
TEMPLATE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_PRCTL = {"x86_64": 157, "aarch64": 167}  # the prctl system call (the template arms PDEATHSIG)
_CHANNEL_ROOM = 200_000  # a run's request larger than this raises the channel's send buffer (root)
_SO_SNDBUFFORCE = 32
_SOURCE_PATH = os.path.join(os.path.dirname(__file__), "warm_template.py")


class TemplateUnavailable(SandboxError):
    """This interpreter cannot serve warm runs (the run goes cold)."""


def jailed(plan: Plan, host: Host) -> bool:
    """Will this run get the namespace jail (SPEC §4.9)? Warm copies build it (from a template or a
    slot's launcher, see lockdown_self in _spawn.c); a launcher's cold spawn does not."""
    from evalbox.policy import jail

    return bool(host.jail and jail.clone_flags(plan))


def why_cold_here() -> str | None:
    """Why default warm runs start cold on this host (None: they start warm)."""
    from evalbox.process.host import probe

    host = probe()
    if host.jail and host.jail_userns:
        return ("this caller's jail is built in a user namespace of its own, which warm copies cannot enter yet, "
                "so warm runs start cold here; EVALBOX_JAIL=0 turns the jail off (and warm runs on)")
    return None


def eligible(plan: Plan, host: Host) -> bool:
    """Can this run start from a warm copy with the same isolation and observable behaviour?"""
    if plan.warm is None or plan.notify is not NotifyMode.DISABLED or not os.path.isabs(plan.argv[0]):
        return False
    if host.jail_userns and jailed(plan, host):
        return False  # a warm copy cannot enter a user namespace's jail yet: such runs start cold
    return not any(k.startswith(("PYTHON", "LC_")) and k not in WARM_ENV or k == "LANG" for k in plan.env)


def slots_usable(plan: Plan, host: Host) -> bool:
    """Resident slots serve runs that need a v1 memory or pids group (v2 hosts join per run). A
    jailed run uses one only when it starts warm: the launcher forks the copy into the jail's
    namespaces as a template does (a launcher's cold spawn has no jail). EVALBOX_SLOTS=0 turns
    them off (every run then joins its group itself)."""
    layout = host.cgroup
    if os.environ.get("EVALBOX_SLOTS", "1") == "0" or (host.jail_userns and jailed(plan, host)):
        return False  # (a launcher cannot build a user namespace's jail)
    want = {c for c, needed in (("memory", plan.memory), ("pids", plan.max_pids)) if needed is not None}
    return layout.version == 1 and bool(want & layout.controllers)


class _Spawner:
    """One long-lived thread starts every template: a process's parent-death signal belongs to
    the thread that created it, and a warm run's parent is its template's parent. A run must not
    die because the thread that happened to start the template ended."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="evalbox-warm-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import signal

        # Never the thread a process-directed signal lands on: the caller's handlers and masks
        # stay as they were (Python runs handlers in the main thread anyway).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            fn, box, done = self._jobs.get()
            try:
                box.append(fn())
            except BaseException as e:  # noqa: BLE001 - handed back to the waiting caller
                box.append(e)
            done.set()

    def call(self, fn: Callable[[], Any], undo: Callable[[Any], None] | None = None) -> Any:
        """fn() run on this thread, where no signal handler's exception (Ctrl-C, an alarm whose
        handler raises) can cut it short. If such an exception reaches the waiting caller, the job
        is still waited for, its result undone with undo(result), and the exception raised then."""
        box: list[Any] = []
        done = threading.Event()
        self._jobs.put((fn, box, done))
        interrupted: BaseException | None = None
        try:  # (work of ended runs, done while this thread would only wait, and only then)
            netns.check_released(stop=done.is_set)
        except BaseException as e:  # noqa: BLE001 - raised once the job is done and undone
            interrupted = e
        while True:
            try:
                done.wait()
                break
            except BaseException as e:  # noqa: BLE001 - raised once the job is done and undone
                interrupted = interrupted or e
        result = box[0]
        if interrupted is not None:
            if undo is not None and not isinstance(result, BaseException):
                undo(result)
            raise interrupted
        if isinstance(result, BaseException):
            raise result
        return result


def kill_stray(pid: int) -> None:
    """Kill and reap a process a template or launcher started for us that no run holds (its start
    was interrupted): our child (CLONE_PARENT), so the pid is still its own. In a jail it is the
    init, whose death ends the namespace; otherwise its process group goes too."""
    if pid <= 0:  # (never "every process" or "our own group")
        return
    if _parent_of(pid) != os.getpid():  # reaped already (by an earlier try cut short): the number
        return                          # may be someone else's by now
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _lockdown_fields(lock: Lockdown) -> dict[str, Any]:
    """The lockdown of a prepared run as marshal-able values (the fds travel separately)."""
    return {
        "cwd": os.fsencode(lock.cwd), "parent_pid": os.getpid(), "rlimits": [tuple(r) for r in lock.rlimits],
        "drop_bounding_set": lock.drop_bounding_set, "last_cap": caps.last_cap(), "securebits": lock.securebits,
        "uid": lock.uid, "gid": lock.gid, "filters": [(bytes(p), int(f)) for p, f in lock.filters], "umask": UMASK,
        "overlays": [(t, o, r, [tuple(b) for b in binds]) for t, o, r, binds in lock.overlays],
        "landlock": lock.ruleset.fd >= 0,
        "listener": any(f & _spawn.SECCOMP_FILTER_FLAG_NEW_LISTENER for _, f in lock.filters),
        # the jail (0: none): the copy is forked into these namespaces and becomes their init
        "jail_flags": lock.jail_flags, "hostname": lock.hostname, "root": lock.root, "root_rights": lock.root_rights,
        "proc_rights": lock.proc_rights, "netns": lock.netns_fd >= 0, "template": lock.template_fd >= 0,
    }


class _Server:
    """A process that forks runs on request over a SOCK_SEQPACKET socket: a template, or a slot's
    resident launcher (a copy of a template living in the slot's cgroup)."""

    pid = pidfd = -1
    control: socket.socket | None = None

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one request/answer exchange at a time

    def _receive(self, timeout: float) -> dict[str, Any]:
        assert self.control is not None
        poller = select.poll()  # not select(): fds may be above 1024 in a busy caller
        poller.register(self.control, select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        if self.control.fileno() not in ready:
            return {"ok": False, "error": "it exited" if ready else "it did not answer in time"}
        data = self.control.recv(4096)
        if not data:
            return {"ok": False, "error": "it exited"}
        answer = marshal.loads(data)
        return answer if isinstance(answer, dict) else {"ok": False, "error": "garbled answer"}

    _ids = itertools.count(1)

    def _ask(self, request: dict[str, Any], fds: list[int], before_answer: Callable[[], None] = lambda: None) -> dict[str, Any]:
        """Send a request, return its answer. Answers carry their request's id: one left unread
        (an exchange cut short) is recognised as stale, and the process it names is killed."""
        with self.lock:
            if self.control is None:
                raise TemplateUnavailable("the warm template is closed")
            request = {**request, "id": next(self._ids)}
            try:
                socket.send_fds(self.control, [marshal.dumps(request)], fds)
            except OSError as e:
                raise TemplateUnavailable(f"the warm template is gone ({e})") from None
            before_answer()
            while True:
                answer = self._receive(START_TIMEOUT)
                if "id" not in answer or answer["id"] == request["id"]:
                    return answer
                if isinstance(answer.get("pid"), int):
                    kill_stray(answer["pid"])

    def _trigger(self, request: dict[str, Any], fds: list[int], after_send: Callable[[], None]) -> None:
        """Send a request that is answered elsewhere (a private run: on its own channel)."""
        with self.lock:
            if self.control is None:
                raise TemplateUnavailable("the warm template is closed")
            try:
                socket.send_fds(self.control, [marshal.dumps(request)], fds)
            except OSError as e:
                raise TemplateUnavailable(f"the warm template is gone ({e})") from None
            after_send()

    @property
    def alive(self) -> bool:
        if self.control is None:
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def start(self, lock: Lockdown, plan: Plan, stdin: int, stdout: int, stderr: int) -> "PendingStart":
        """Start one run from a fresh copy: returns once the copy exists, while it locks itself
        down (see PendingStart). Raises TemplateUnavailable when the server itself failed
        (nothing of the run was started)."""
        argv = list(plan.argv)
        request = {"run": _lockdown_fields(lock), "env": list(lock.env), "script": os.path.join(lock.cwd, argv[2]),
                   "argv": argv[2:], "orig_argv": argv}
        return self._launch(lock, request, stdin, stdout, stderr, private=True)

    def _launch(self, lock: Lockdown, request: dict[str, Any], stdin: int, stdout: int,
                stderr: int, private: bool = False) -> "PendingStart":
        """Send a run request with the run's fds and take the new process's pid; the rest of the
        start (the copy locking itself down) is the returned PendingStart's.

        `private`: the server only forks on a bare trigger, and the request goes over a channel
        of the run's own, straight into the new copy: a server whose memory later copies inherit
        must never hold one run's environment or arguments."""
        jail_flags = lock.jail_flags if private else 0
        wants_listener = any(flags & _spawn.SECCOMP_FILTER_FLAG_NEW_LISTENER for _, flags in lock.filters)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if wants_listener else (None, None)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        alive = os.pidfd_open(os.getpid()) if jail_flags else -1  # the init's check that we live
        fds = [stdin, stdout, stderr, write_end] + ([lock.ruleset.fd] if lock.ruleset.fd >= 0 else [])
        fds += [theirs.fileno()] if theirs is not None else []
        if jail_flags:
            fds += [fd for fd in (lock.netns_fd, lock.template_fd) if fd >= 0] + [alive]
        fds += list(lock.cgroup_fds)
        ends = [write_end] + ([alive] if alive >= 0 else [])

        def close_ours() -> None:
            os.close(write_end)
            ends.remove(write_end)
            if theirs is not None:
                theirs.close()
        channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) if private else None

        def send() -> PendingStart:
            """A private run: the request goes to the copy-to-be, the trigger to the server, and
            the copy's pid comes back on the channel later (PendingStart.take_pid)."""
            assert channel is not None
            try:
                payload = marshal.dumps(request)  # (in a jail it holds the plan's files: may be large)
                if len(payload) > _CHANNEL_ROOM:
                    channel[0].setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, len(payload) + 4096)
                socket.send_fds(channel[0], [payload], fds)  # read by the copy
                del payload
                self._trigger({"run": True, "jail": jail_flags}, [channel[1].fileno()], close_ours)
            except BaseException:
                os.close(read_end)
                channel[0].close()
                if ours is not None:
                    ours.close()
                raise
            return PendingStart(lock, -1, -1, read_end, ours, jail_flags, answer=channel[0])

        def exchange() -> PendingStart:
            try:
                answer = self._ask(request, fds, close_ours)
                if "pid" not in answer:
                    raise TemplateUnavailable(f"the warm template could not start a run: {answer.get('error')}")
                pid = answer["pid"]
                try:
                    pidfd = os.pidfd_open(pid)  # our child (CLONE_PARENT): its pid stays its own until we reap it
                except BaseException:
                    kill_stray(pid)
                    raise
            except BaseException:
                os.close(read_end)
                if ours is not None:
                    ours.close()
                raise
            return PendingStart(lock, pid, pidfd, read_end, ours, jail_flags)

        try:
            # On the spawner thread, which no signal handler's exception interrupts: an exchange cut
            # short would leave an answer unread and a started process nobody holds.
            return _spawner().call(send if private else exchange, undo=PendingStart.abandon)  # type: ignore[no-any-return]
        finally:
            for fd in ends:
                os.close(fd)
            for end in (theirs, channel[1] if channel else None):
                if end is not None:
                    end.close()

    def _end(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.pidfd >= 0:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            self._reap()
            fd, self.pidfd = self.pidfd, -1  # (forgotten first: never closed twice)
            os.close(fd)

    def _reap(self) -> None:
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class PendingStart:
    """A warm copy (or a launcher's child) being started. First its server forks it and says its
    pid on the run's own channel (`answer`; `fd` is that channel until `take_pid`), then the copy
    locks itself down: `fd` (its report pipe) turns readable when it is done (it closed its error
    pipe; in a jail, its init reported) or failed. The caller may serve other runs meanwhile
    (the fork is the server's ~0.5 ms, the lockdown the copy's own CPU, ~2-4 ms)."""

    def __init__(self, lock: Lockdown, pid: int, pidfd: int, read_end: int, ours: socket.socket | None,
                 jail_flags: int, answer: socket.socket | None = None) -> None:
        self.lock, self.pid, self.pidfd, self.read_end, self.ours, self.jail_flags = lock, pid, pidfd, read_end, ours, jail_flags
        self.answer = answer

    @property
    def fd(self) -> int:
        """What to wait on next: the channel (for the pid), then the report pipe; -1 when done."""
        return self.answer.fileno() if self.answer is not None else self.read_end

    @property
    def awaiting_pid(self) -> bool:
        return self.answer is not None

    def take_pid(self, timeout: float | None) -> bool:
        """Take the copy's pid from its server's answer, waiting up to `timeout` seconds (None:
        not at all; False if it is not there yet). Raises TemplateUnavailable if the server
        failed before the copy existed. The answer is only peeked at until the pid is kept: an
        exception in between leaves it for `abandon`, which then still finds what to kill."""
        answer = self.answer
        assert answer is not None
        if timeout is not None:
            poller = select.poll()
            poller.register(answer, select.POLLIN)
            if not poller.poll(timeout * 1000):
                raise TemplateUnavailable(f"the warm template did not start a run in {timeout:g} s")
        try:
            data = answer.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        try:
            reply = marshal.loads(data) if data else {"error": "it exited"}
        except (EOFError, ValueError, TypeError):
            reply = {}
        pid = reply.get("pid") if isinstance(reply, dict) else None
        if not isinstance(pid, int) or pid <= 0:
            why = reply.get("error", "garbled answer") if isinstance(reply, dict) else "garbled answer"
            raise TemplateUnavailable(f"the warm template could not start a run: {why}")
        self.pid = pid  # our child (CLONE_PARENT): its pid stays its own until we reap it
        # consumed before the close: closing a socket with unread data resets its peer, the
        # channel the copy may not have read its request from yet
        answer.recv(4096, socket.MSG_DONTWAIT)
        self.answer = None
        answer.close()
        self.pidfd = os.pidfd_open(pid)
        return True

    def finish(self) -> tuple[int, int, int, int]:
        """(pid, pidfd, notify listener or -1, init report fd or -1) once the run is locked down
        and the program about to run (waits for that if `fd` is not readable yet). In a jail,
        pid is the jail's init and the report fd carries the program's verdict, as for a cold
        jailed spawn. Raises the spawn error of a cold run when the lockdown failed (the process
        reaped, every fd of the start closed)."""
        from evalbox.process.spawn import failed_start, reports_started, start_listener

        if self.answer is not None:
            try:
                if not self.take_pid(START_TIMEOUT):  # (never a start without its pid)
                    raise TemplateUnavailable("the warm template's answer vanished")
            except TemplateUnavailable:
                raise  # (the caller kills the server, then settles this start: see settle)
            except BaseException:
                self.abandon()
                raise
        pid, pidfd, read_end, ours, jail_flags = self.pid, self.pidfd, self.read_end, self.ours, self.jail_flags
        keep_read_end = False
        listener = -1
        try:
            self.read_end = -1  # (from here on this start is finished or abandoned: never twice)
            report = os.read(read_end, 8)
            # (a warm copy without a jail says it runs by closing its error pipe: end of file)
            runs = reports_started(report) if jail_flags else len(report) < 8
            listener, report = start_listener(pid, ours, report, runs)
            started = reports_started(report)
            keep_read_end = bool(jail_flags) and started
            # Everything that is not returned is closed in here, before the point of no return:
            # a signal handler's exception in between must find the run still to be killed.
            self.ours = None
            if ours is not None:
                ours.close()
            if keep_read_end:
                os.set_blocking(read_end, False)
            else:
                read_end, closing = -1, read_end
                os.close(closing)
        except BaseException:  # (interrupted: nothing of the run may go on unwatched)
            self.pidfd = -1
            os.close(pidfd)
            kill_stray(pid)
            for fd in (listener, read_end):
                if fd >= 0:
                    os.close(fd)
            if ours is not None:
                ours.close()
            raise
        if keep_read_end:
            return pid, pidfd, listener, read_end
        if jail_flags or len(report) == 8:
            raise failed_start(self.lock, pid, pidfd, report)
        return pid, pidfd, listener, -1

    def settle(self) -> None:
        """After the server failed and was killed and reaped (or its slot closed): whatever it
        answered before that is all it ever will. A copy it named is killed and reaped; one it
        forked but never named cannot pass its gate (warm_template.py) and exits. Then every fd
        of this start is closed."""
        if self.answer is not None and self.pid <= 0:
            try:
                self.take_pid(None)
            except (TemplateUnavailable, OSError):
                pass
        stray = _named_child(self.answer, "stray") if self.answer is not None else 0
        for pid in (self.pid, stray):  # killed before anything is closed: see abandon
            kill_stray(pid)  # (nothing for 0 or -1)
        self.close()

    def close(self) -> None:
        """Close this start's fds (its server failed, or what it started is killed next)."""
        ends, fds = (self.answer, self.ours), (self.read_end, self.pidfd)
        self.answer = self.ours = None  # (forgotten before closed: never closed twice if cut short)
        self.read_end = self.pidfd = -1
        for end in ends:
            if end is not None:
                end.close()
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def abandon(self) -> None:
        """The run will not be started after all: kill and reap what was started, close its fds.
        (A copy whose pid is not known yet is waited for: its server forks it in a moment.)
        Killed first, closed after: an abandon cut short leaves its read end open, and done
        again it finishes the job (nothing to do once finish() took the start over)."""
        if self.read_end < 0:
            return
        if self.answer is not None and self.pid <= 0:
            try:
                self.take_pid(START_TIMEOUT)
            except (TemplateUnavailable, OSError):
                pass  # nothing was forked, or its server died with it (then it is in a killed slot)
        if self.pid > 0:
            kill_stray(self.pid)
        self.close()


class Template(_Server):
    """One warm interpreter: `executable` run as `argv0 -s -c <template>` with `preload` imported."""

    def __init__(self, executable: str, argv0: str, preload: tuple[str, ...]) -> None:
        super().__init__()
        self.executable, self.argv0, self.preload = executable, argv0, preload
        self.failed: list[str] = []
        self.idle_slots: list[Slot] = []
        self.slots_lock = threading.Lock()
        self.closed = False  # (a slot given back after this is closed, never kept idle)
        try:
            _spawner().call(self._start)
        except BaseException:  # (a caller cut short while it waits: the template it started goes)
            self.close()
            raise

    def _start(self) -> None:
        # Not _spawn.spawn: that drops every capability, and the template must keep the ones the
        # lockdown of its copies needs (setuid, the bounding set, the mount namespace). It arms
        # its own parent-death signal (see warm_template.py).
        import subprocess

        with open(_SOURCE_PATH, encoding="utf-8") as f:
            source = f.read()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.process = subprocess.Popen(
                [self.argv0, "-s", "-c", source, _spawn.__file__, ",".join(self.preload), str(os.getpid()),
                 str(_PRCTL[os.uname().machine])],
                executable=self.executable, stdin=theirs, stdout=subprocess.DEVNULL,
                stderr=None if os.environ.get("EVALBOX_WARM_DEBUG") else subprocess.DEVNULL,
                cwd="/", env=TEMPLATE_ENV, start_new_session=True, umask=UMASK,
            )
        except OSError as e:
            ours.close()
            raise TemplateUnavailable(f"cannot start {self.executable} as a warm template: {e}") from None
        finally:
            theirs.close()
        self.pid, self.pidfd, self.control = self.process.pid, os.pidfd_open(self.process.pid), ours
        hello = self._receive(START_TIMEOUT)
        if not hello.get("ok"):
            self.close()
            raise TemplateUnavailable(f"{self.executable} cannot serve warm runs: {hello.get('error', 'no answer')}")
        self.failed = list(hello.get("failed", ()))

    def _reap(self) -> None:
        self.process.wait()

    def close(self) -> None:
        with self.slots_lock:
            self.closed = True
            slots, self.idle_slots = self.idle_slots, []
        for slot in slots:
            slot.close()
        self._end()

    # -- resident slots --------------------------------------------------------------------------

    def acquire_slot(self, layout: cgroups.Layout) -> "Slot | None":
        """An idle slot of this template, or a new one (None if one cannot be made here)."""
        with self.slots_lock:
            while self.idle_slots:
                slot = self.idle_slots.pop()
                if slot.alive:
                    Slot.busy.add(slot)
                    return slot
                slot.close()
        try:
            slot = Slot(self, layout)
        except (OSError, TemplateUnavailable):
            return None
        Slot.busy.add(slot)
        return slot

    def release_slot(self, slot: "Slot") -> None:
        """Take a slot back after its run, only if provably clean; otherwise it is destroyed."""
        Slot.busy.discard(slot)
        if slot.alive and slot.clean():
            with self.slots_lock:
                # (a closed template's idle slots are nobody's: their launchers would be left)
                if len(self.idle_slots) < IDLE_SLOTS and not self.closed:
                    self.idle_slots.append(slot)
                    return
        slot.close()


class Slot(_Server):
    """A resident slot (v1 cgroup hosts): its own cgroup with a launcher living in it, a copy of
    the template that forks the slot's runs. A run is born inside the group, so it never
    migrates into a v1 cgroup (each migration can wait a whole RCU grace period, 5-18 ms). One run
    at a time; recycled only when nothing of the last run is left (see `clean`)."""

    _names = itertools.count()
    busy: "set[Slot]" = set()  # slots serving a run now (for server_cpu_seconds)

    def __init__(self, template: Template, layout: cgroups.Layout) -> None:
        super().__init__()
        # On the spawner thread, which no signal handler's exception interrupts (as _launch's
        # exchange): a launcher asked for is either ready and held here, or killed, reaped and
        # its group removed; an interrupted caller undoes the slot it made (close).
        _spawner().call(lambda: self._make(template, layout), undo=lambda _: self.close())

    def _make(self, template: Template, layout: cgroups.Layout) -> None:
        self.group = cgroups.Group(layout, f"slot-{next(self._names)}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        procs: list[int] = []
        try:
            procs = self.group.open_procs()
            answer = template._ask({"slot": True}, [theirs.fileno(), *procs])
        except BaseException:
            ours.close()
            self.group.remove()
            raise
        finally:
            theirs.close()
            for fd in procs:
                os.close(fd)
        if "pid" not in answer and not template.alive:
            # its server died, maybe after forking the launcher: one that says it is ready (it
            # joined the group) is our child (CLONE_PARENT) that nobody named; killed and reaped
            kill_stray(_named_child(ours, "ready"))
        self.control = ours
        try:
            if "pid" not in answer:
                raise TemplateUnavailable(f"the warm template could not make a slot: {answer.get('error')}")
            self.pid = answer["pid"]  # our child (CLONE_PARENT): its pid stays its own until we reap it
            self.pidfd = os.pidfd_open(self.pid)
            ready = self._receive(START_TIMEOUT)
            self.group.resident = self.pid
            if not ready.get("ready"):
                raise TemplateUnavailable(f"a warm slot did not start: {ready.get('error')}")
            self.group.reset()
        except BaseException:  # (the launcher is killed and reaped, its group removed)
            if self.pidfd < 0:
                kill_stray(self.pid)
            self.close()
            raise

    def spawn(self, lock: Lockdown, stdin: int, stdout: int, stderr: int) -> tuple[int, int, int, int]:
        """A cold spawn (clone, lockdown, exec) done by the launcher, inside the slot's group:
        the same child as process.spawn.spawn makes, and the same (pid, pidfd, listener, init
        report fd or -1)."""
        request = {"exec": {**_lockdown_fields(lock), "path": os.fsencode(lock.executable), "argv": list(lock.argv),
                            "envp": list(lock.env), "magic": lock.magic}}
        if lock.jail_flags:
            return self._spawn_jailed(lock, request, stdin, stdout, stderr)
        return self._launch(lock, request, stdin, stdout, stderr).finish()  # (answered after the exec)

    def _spawn_jailed(self, lock: Lockdown, request: dict[str, Any], stdin: int, stdout: int,
                      stderr: int) -> tuple[int, int, int, int]:
        """The launcher clones the jail's init as the run's sibling (process.spawn's jailed spawn,
        done from inside the slot's group) and answers with the init's first report; the init's
        record at the end comes on our copy of the report pipe."""
        from evalbox.process.spawn import failed_start, reports_started, start_listener

        wants_listener = any(flags & _spawn.SECCOMP_FILTER_FLAG_NEW_LISTENER for _, flags in lock.filters)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if wants_listener else (None, None)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        fds = [stdin, stdout, stderr, write_end, read_end] + ([lock.ruleset.fd] if lock.ruleset.fd >= 0 else [])
        fds += [theirs.fileno()] if theirs is not None else []
        fds += [fd for fd in (lock.netns_fd, lock.template_fd) if fd >= 0]
        channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)

        def exchange() -> tuple[int, int, int, bytes]:
            payload = marshal.dumps(request)
            if len(payload) > _CHANNEL_ROOM:
                channel[0].setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, len(payload) + 4096)
            socket.send_fds(channel[0], [payload], fds)
            del payload
            answer = self._ask({"exec_channel": True}, [channel[1].fileno()])
            if "pid" not in answer:
                raise TemplateUnavailable(f"a warm slot could not start a run: {answer.get('error')}")
            pid, report = answer["pid"], answer["report"]
            try:
                pidfd = os.pidfd_open(pid)  # our child (CLONE_PARENT): its pid stays its own until we reap it
                listener, report = start_listener(pid, ours, report, reports_started(report))
            except BaseException:
                kill_stray(pid)
                raise
            return pid, pidfd, listener, report

        def undo(started: tuple[int, int, int, bytes]) -> None:
            for fd in started[1:3]:
                if fd >= 0:
                    os.close(fd)
            kill_stray(started[0])

        keep_read_end = False
        try:
            # (on the spawner thread, as _launch's exchange)
            pid, pidfd, listener, report = _spawner().call(exchange, undo)
            started = reports_started(report)
            keep_read_end = started
        finally:
            os.close(write_end)
            if not keep_read_end:
                os.close(read_end)
            for end in (ours, theirs, *channel):
                if end is not None:
                    end.close()
        if started:
            os.set_blocking(read_end, False)
            return pid, pidfd, listener, read_end
        raise failed_start(lock, pid, pidfd, report)

    def clean(self) -> bool:
        """No process of the last run is left in the group; its counters start again from zero."""
        if not self.group.only_resident_left(lambda: self.alive):
            return False
        self.group.reset()
        return True

    def close(self) -> None:
        """(Only a slot no run holds is closed: what is left in its group is nobody's.)"""
        self._end()
        if self.group.dirs:
            # A jail's init whose start was cut short (its answer never read) is our child
            # (CLONE_PARENT): killed with the group, it must be reaped here or stay a zombie.
            strays = [pid for pid in self.group.pids() if _parent_of(pid) == os.getpid()]
            self.group.kill()
            for pid in strays:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            self.group.resident = 0
            self.group.remove()


SETTLE_TIMEOUT = 5.0  # seconds for the unnamed copies of a dead server to exit at their gate
_CREDS_SIZE = 12  # struct ucred: pid, uid, gid


def _named_child(channel: socket.socket, word: str) -> int:
    """A run's channel (or a slot's control socket) once its server is dead: the pid of the child
    that said `word` on it (a copy that never got past its gate, warm_template._name_stray; a
    launcher whose "ready" nobody expected), as the kernel translated its credentials; 0 at end
    of file (nothing holds the other end: nobody was forked) or after SETTLE_TIMEOUT."""
    try:
        channel.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        channel.setblocking(False)
        poller = select.poll()
        poller.register(channel, select.POLLIN)
        end = time.monotonic() + SETTLE_TIMEOUT
        while poller.poll(max(0.0, end - time.monotonic()) * 1000):
            try:
                data, ancillary, _, _ = channel.recvmsg(4096, socket.CMSG_SPACE(_CREDS_SIZE))
            except BlockingIOError:
                continue
            if not data:
                return 0
            try:
                said = marshal.loads(data)
            except (EOFError, ValueError, TypeError):
                continue
            if not isinstance(said, dict) or not said.get(word):
                continue  # (the server's own answer: an error, taken care of by the caller)
            for level, kind, creds in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(creds) >= 4:
                    pid = int.from_bytes(creds[:4], sys.byteorder, signed=True)
                    if pid > 0 and _parent_of(pid) == os.getpid():  # (never a process not our child)
                        return pid
    except OSError:
        pass
    return 0


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0

_lock = threading.Lock()
_templates: dict[tuple[str, str, tuple[str, ...]], Template | TemplateUnavailable] = {}
_the_spawner: _Spawner | None = None


def _spawner() -> _Spawner:
    global _the_spawner
    if _the_spawner is None:
        _the_spawner = _Spawner()
    return _the_spawner


def template_for(plan: Plan) -> Template | None:
    """The live template for this plan's interpreter and preload set, started on first use; None
    when this interpreter cannot serve warm runs (remembered: it is not asked again)."""
    assert plan.warm is not None
    with _lock:
        key = (plan.argv[0], plan.argv[0], plan.warm)
        return _live_template(key, key)


def _live_template(key: tuple, args: tuple) -> Template | None:  # type: ignore[type-arg]
    """The template kept under `key`, made from `args` (interpreter, argv0, preload set) on first
    use or when it died; None when it cannot be made (remembered). Called under _lock."""
    found = _templates.get(key)
    if isinstance(found, TemplateUnavailable):
        return None
    if found is not None and found.alive:
        return found
    if found is not None:
        found.close()
    try:
        found = _templates[key] = Template(*args)
    except TemplateUnavailable as e:
        _templates[key] = e
        return None
    return found


def launcher_template() -> Template | None:
    """The template whose slots start cold (exec) runs: this interpreter, nothing preloaded."""
    import sys

    with _lock:
        return _live_template(("exec", sys.executable, ()), (sys.executable, sys.executable, ()))


def forget(template: Template) -> None:
    """A template that failed a request is closed; the next run starts a new one."""
    with _lock:
        for key, value in list(_templates.items()):
            if value is template:
                del _templates[key]
    template.close()


def held_fds() -> set[int]:
    """The fds evalbox keeps for its templates and idle slots (a socket and a pidfd each, and the
    files a slot's group keeps open: bounded, see cgroups.FD_HOLDERS)."""
    with _lock:
        servers: list[_Server] = []
        for t in _templates.values():
            if isinstance(t, Template):
                servers += [t, *t.idle_slots]
    servers += list(Slot.busy)
    fds = {fd for s in servers for fd in (s.pidfd, s.control.fileno() if s.control else -1) if fd >= 0}
    return fds.union(*(s.group.held_fds() for s in servers if isinstance(s, Slot)))


def resident_pids() -> set[int]:
    """Pids of the slot launchers living in slot cgroups now (none of them is part of a run)."""
    with _lock:
        slots = {slot for t in _templates.values() if isinstance(t, Template) for slot in t.idle_slots}
    return {slot.pid for slot in slots | set(Slot.busy) if slot.pid > 0}


def server_cpu_seconds() -> float:
    """CPU time used so far by the live templates and slot launchers (for `evalbox bench`: their
    forks are part of what a warm run costs, but they are not reaped children of the caller)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    with _lock:
        servers: list[_Server] = []
        for value in _templates.values():
            if isinstance(value, Template):
                servers += [value, *value.idle_slots]
    servers += list(Slot.busy)
    for server in servers:
        try:
            with open(f"/proc/{server.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def close_all() -> None:
    with _lock:
        for value in _templates.values():
            if isinstance(value, Template):
                value.close()
        _templates.clear()


def _forget_after_fork() -> None:
    # A forked caller owns none of its parent's templates, and has no spawner thread.
    global _the_spawner
    _templates.clear()
    _the_spawner = None


os.register_at_fork(after_in_child=_forget_after_fork)
import atexit  # noqa: E402

atexit.register(close_all)
