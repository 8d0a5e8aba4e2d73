"""One running sandbox: its process, pipes, limits bookkeeping, tree kill, reaping and verdict.

I/O multiplexing is the executor's job; this class owns the per-run state and the rules that
turn what happened into an Output.
"""

from __future__ import annotations

import os
import resource
import signal
import time

from evalbox.policy.plan import WORK_DIR, Plan
from evalbox.process import orphans, warm, watchdog
from evalbox.process.collect import COLLECT_BUDGET, collect
from evalbox.process.host import Host
from evalbox.process.lockdown import Lockdown, prepare
from evalbox.process.result import Output, Status
from evalbox.process.spawn import InitRecord, kill_session, kill_uid, read_init_record, spawn
from evalbox.process.supervisor import Supervision

# RLIMIT_CPU is charged by scheduler ticks, the CPU time reported here is exact: on a loaded
# machine the ticks ran up to ~18% ahead (measured: SIGXCPU at 0.82 s exact for a 1 s limit).
CPU_TICK_SLACK = 0.1  # seconds, at least
CPU_TICK_SKEW = 0.2  # of cpu_time



class Sandbox:
    def __init__(self, plan: Plan, host: Host, sandbox_id: int = 0) -> None:
        self.plan = plan
        self.host = host
        self.id = sandbox_id
        self.supervision: Supervision | None = None
        self.error: str | None = None  # why evalbox ended the run, when it was not a limit
        # Warm Python (README "Warm Python"): a template's copy, born in a resident slot's cgroup
        # where the host has v1 cgroups; anything a copy cannot do the same way runs cold.
        self.warm = False
        self.slot: warm.Slot | None = None
        self.launcher: warm.Template | None = None
        template = warm.template_for(plan) if warm.eligible(plan, host) else None
        if warm.slots_usable(plan, host):
            # no migration into a v1 cgroup: the run is born in a resident slot's group, from a
            # warm copy or by a cold spawn done by the slot's launcher
            self.launcher = template or warm.launcher_template()
            if self.launcher is not None:
                self.slot = self.launcher.acquire_slot(host.cgroup)
        try:
            self.lock: Lockdown = prepare(plan, host, slot_group=self.slot.group if self.slot else None)
        except BaseException:
            if self.slot is not None:
                self.launcher.release_slot(self.slot)
            raise
        self.template = template
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_truncated = self.stderr_truncated = False
        self.kill_reason: Status | None = None
        self.wait_status: int | None = None
        self.rusage = None
        self.ended_at: float | None = None
        self.init_report = -1  # in a jail: the init's report pipe (see spawn.InitRecord)
        self.pid = self.pidfd = -1  # the program (in a jail, its init), once started
        self._spawned: list[tuple[int, ...]] = []  # a cold spawn's child, as soon as it exists (see _spawn_cold)
        self.released = False  # every process reaped and every resource given back (close, _abandon_start)
        self.deadline: float | None = None  # set once the program runs
        self.pending: warm.PendingStart | None = None  # a warm copy still locking itself down
        # the program's ends of its stdio pipes: kept while a warm start is pending (should its
        # server fail, the run starts cold with them)
        self._child_fds: list[int] = []
        try:
            in_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
            self.stdout_r, out_w = os.pipe2(os.O_CLOEXEC)
            self.stderr_r, err_w = os.pipe2(os.O_CLOEXEC)
            self._child_fds = [in_r, out_w, err_w]
            for fd in (self.stdin_w, self.stdout_r, self.stderr_r):
                os.set_blocking(fd, False)
            self.started = time.monotonic()
            started = self._start(plan, host, in_r, out_w, err_w)
        except BaseException:
            self._abandon_start()
            raise
        if isinstance(started, warm.PendingStart):
            self.pending = started  # the caller calls finish_start (now, or when pending.fd is readable)
            return
        try:
            self._after_start(started)
        except BaseException:
            # (its own clean-up cut short too: the program is dead by then, finish releasing; the
            # caller never gets this sandbox to do it, as an executor does for a warm start)
            self.discard()
            raise

    def _close_child_fds(self) -> None:
        fds, self._child_fds = self._child_fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def advance_start(self, overdue: bool = False) -> bool:
        """A warm start's first stage is over (its server said the copy's pid: `pending.fd` was
        readable). True while the start is still pending (the copy's lockdown, on the new
        `pending.fd`); False when its server had failed and the run started cold instead.
        `overdue`: the server did not answer in time; if it still has not, the run goes cold."""
        pending = self.pending
        assert pending is not None and pending.awaiting_pid
        try:
            if not pending.take_pid(timeout=None):
                if not overdue:
                    return True  # (woken early: nothing there yet)
                raise warm.TemplateUnavailable(f"the warm template did not start a run in {warm.START_TIMEOUT:g} s")
        except warm.TemplateUnavailable:
            self._start_cold_instead(pending)
            return False
        except BaseException:
            self._give_up(pending)
            raise
        return True

    def finish_start(self) -> None:
        """Complete a warm start (waits for the copy's lockdown if it is not done yet). Raises the
        spawn error when the lockdown failed; the run is then cleaned up and nothing of it ran."""
        pending = self.pending
        assert pending is not None
        try:
            self.pid, self.pidfd, listener, self.init_report = pending.finish()
        except warm.TemplateUnavailable:  # (its server failed or never answered)
            self._start_cold_instead(pending)
            return
        except BaseException:
            self._give_up(pending)
            raise
        self.pending = None
        self._after_start(listener)

    def _start_cold_instead(self, pending: warm.PendingStart) -> None:
        """A warm start whose server failed or never answered: the server is killed (with its
        slot), then anything it started is (PendingStart.settle), and the run starts cold."""
        try:
            self.warm = False
            try:
                self._drop_warm()
            finally:
                pending.settle()  # (self.pending until settled: a settle cut short is done again by discard)
            self.pending = None
            listener = self._spawn_cold(*self._child_fds)
        except BaseException:
            self._abandon_start()
            raise
        self._after_start(listener)

    def cancel_start(self, give_up: bool) -> bool:
        """Give up a warm start whose copy's pid has not been taken yet (its run was killed):
        nothing of the run runs on, everything is released. A copy whose pid has come is killed
        and reaped (its program may have begun meanwhile); a server that failed, or that is given up (`give_up`: it did not answer in time,
        or the caller cannot wait), is killed first (with its slot), then whatever it started
        (PendingStart.settle): no waiting on the server. False (nothing done) when the server
        has not answered yet and is not given up."""
        pending = self.pending
        assert pending is not None and pending.awaiting_pid
        try:
            taken, failed = pending.take_pid(timeout=None), False
        except warm.TemplateUnavailable:
            taken, failed = False, True
        if not (taken or failed or give_up):
            return False
        if not taken:
            self.warm = False
            try:
                self._drop_warm(then_cold=False)
            finally:
                pending.settle()
        self._give_up(pending)  # (the copy whose pid came is killed and reaped; else nothing left)
        return True

    def _give_up(self, pending: warm.PendingStart) -> None:
        """Kill and reap what a warm start started, then release the run. The start stays this
        sandbox's `pending` until its copy is dead: a give-up cut short is done again by
        discard() (never a release of the uid while the copy may still run)."""
        self.pending = pending
        pending.abandon()
        self.pending = None
        self._abandon_start()

    def discard(self) -> None:
        """Undo a sandbox its executor could not take (interrupted right after it was made, or
        while its start was finished): kill and reap what was started, release everything. Does
        nothing once the sandbox is released (a start cut short releases its own)."""
        if self.released:
            return
        if self.pending is not None:
            self._give_up(self.pending)
            return
        if self.pid <= 0:  # no program was ever started: a start cut short
            self._abandon_start()
            return
        self.end(None)
        self.reap()
        self.close()

    def _abandon_start(self) -> None:
        """A start that failed or was cut short: nothing of the run may go on. A program already
        started (the cut came after its spawn returned) is killed, reaped and released; so is a
        warm copy still held as `pending` (a give-up or settle cut short)."""
        if self.pending is not None:
            self._give_up(self.pending)
            return
        if self.pid <= 0 and self._spawned:  # cut as its cold spawn returned
            self.pid, self.pidfd = self._spawned[0][:2]
        if self.pid > 0 and self.wait_status is None:
            self._end_unwatched(-1)
            return
        # (each fd forgotten before it is closed, here and in close(): a release cut short and
        # done again never closes a number twice, which may belong to someone else by then)
        self._close_child_fds()
        self._close_fds("stdin_w", "stdout_r", "stderr_r")
        self.lock.close()
        slot, self.slot = self.slot, None
        if slot is not None:
            self.launcher.release_slot(slot)
        self.released = True

    def _close_fds(self, *names: str) -> None:
        """Close the fds these attributes hold, each forgotten before it is closed."""
        for name in names:
            fd = getattr(self, name, -1)
            setattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _after_start(self, listener: int) -> None:
        """The program runs: its supervisor, its guard registration and its clock. Whatever
        cuts this short (a supervisor that cannot be made, a signal handler's exception) first
        kills, reaps and releases the program: nothing of it may run on unwatched, unreaped."""
        try:
            self._close_child_fds()
            self._watch_started(listener)
        except BaseException:
            self._end_unwatched(listener)
            raise

    def _end_unwatched(self, listener: int) -> None:
        """Kill the started program's tree, reap it, release everything (its status is nobody's:
        no Output is made). `listener` is closed unless the supervision holds it. Killed and
        reaped first: a second cut in what follows leaves fds, never a program running."""
        self.kill_tree()
        if self.wait_status is None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass  # (reaped by an earlier attempt cut short)
            self.wait_status = 0
        self._close_child_fds()
        if listener >= 0 and self.supervision is None:
            try:
                os.close(listener)
            except OSError:
                pass
        self.lock.release_spawn_resources()
        self.close()

    def _watch_started(self, listener: int) -> None:
        plan = self.plan
        if listener >= 0:
            # (before the ruleset is closed: supervised opens are made with the program's rights;
            # should this fail, the listener is still ours to close)
            self.supervision = Supervision(self.id, plan, listener, self.pid, self.host.arch,
                                           others_only=self.host.switches_uid, routing=self.lock.routing,
                                           workspace=self._workspace_seen_by_host(),
                                           ruleset_fd=self.lock.ruleset.fd,
                                           uid=self.lock.uid, gid=self.lock.gid, proc_gid=self.lock.proc_gid)
        self.lock.release_spawn_resources()
        group = self.lock.cgroup
        lease = self.lock.uid_lease
        watchdog.register(str(self.pid), self.pid, self.lock.uid, lease.path if lease else "",
                          group.distinct_dirs if group else [],
                          self.lock.workspace.root if self.lock.workspace.on_host else "")
        self.deadline = self.started + plan.timeout if plan.timeout is not None else None

    def _workspace_seen_by_host(self) -> str:
        """The workspace as the program has it: in the jail, its tmpfs in the jail's root (reached
        through the init's /proc root link; its components are mount points the program cannot
        move), not the host directory of the same name."""
        root = self.lock.workspace.root
        return f"/proc/{self.pid}/root{root}" if self.lock.jail_flags else root

    def _start(self, plan: Plan, host: Host, stdin: int, stdout: int, stderr: int) -> "int | warm.PendingStart":
        """Start the program warm if it may (returns the copy's PendingStart), else cold (returns
        the notify listener or -1)."""
        template = self.template
        self.caller_peak_rss = 0  # a warm copy or a launcher's child never shared our memory
        try:
            if template is not None:
                pending = (self.slot or template).start(self.lock, plan, stdin, stdout, stderr)
                self.warm = True
                return pending
            if self.slot is not None:
                self.pid, self.pidfd, listener, self.init_report = self.slot.spawn(self.lock, stdin, stdout, stderr)
                return listener
        except warm.TemplateUnavailable:
            self._drop_warm()
        return self._spawn_cold(stdin, stdout, stderr)

    def _drop_warm(self, then_cold: bool = True) -> None:
        """Nothing of the run started in its template or slot, which failed: it goes cold (in a
        group of its own: prepare again), or nowhere (`then_cold` False: the caller releases it)."""
        if self.slot is not None:
            broken = self.slot
            self.slot = None
            warm.Slot.busy.discard(broken)  # (never back to the idle ones: its launcher failed)
            broken.close()
            if then_cold:
                self.lock.close()
                self.lock = prepare(self.plan, self.host)
        elif self.template is not None:
            warm.forget(self.template)
        self.template = None

    def _spawn_cold(self, stdin: int, stdout: int, stderr: int) -> int:
        # (the C spawn records the child in `_spawned` before it returns: an exception raised as it
        # returns, before self.pid is set, still lets _abandon_start kill and reap it)
        self.pid, self.pidfd, listener, self.init_report = spawn(self.lock, stdin, stdout, stderr, self._spawned)
        # the spawn child shared our memory until it exec'd (spawn returns after that), and the
        # kernel folds that memory's peak into the program's ru_maxrss: remember our peak now
        self.caller_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return listener

    # -- limits ------------------------------------------------------------------------------

    def take_output(self, stream: int, data: bytes) -> bytes:
        """Keep what fits under max_output (stdout and stderr together); returns the kept part."""
        cap = self.plan.max_output
        buf = self.stdout if stream == 1 else self.stderr
        if cap is not None:
            room = cap - len(self.stdout) - len(self.stderr)
            if len(data) > room:
                data = data[: max(room, 0)]
                if stream == 1:
                    self.stdout_truncated = True
                else:
                    self.stderr_truncated = True
                self.end(Status.OUTPUT_LIMIT)
        buf += data
        return data

    def tree_cpu_seconds(self) -> float | None:
        group = self.lock.cgroup
        return group.cpu_seconds() if group is not None else None

    def over_cpu_limit(self) -> bool:
        used = self.tree_cpu_seconds()
        return self.plan.cpu_time is not None and used is not None and used >= self.plan.cpu_time

    # -- ending --------------------------------------------------------------------------------

    def end(self, reason: Status | None) -> None:
        """Stop the run: remember why (the first reason wins) and kill every process in it."""
        if self.kill_reason is None and reason is not None and self.wait_status is None:
            self.kill_reason = reason
        self.kill_tree()

    def kill_tree(self) -> None:
        if self.pid <= 0:
            return  # never started (or its start was cleaned up): there is no tree
        if self.lock.jail_flags:
            # The init kills the rest of its namespace, then reports the program's end. (Once
            # the init is reaped, its namespace is empty: see reap.)
            if self.wait_status is None:
                try:
                    os.kill(self.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            return
        # Until the leader is reaped its pid cannot be reused, so the group id is safe to signal.
        # Processes that left the group are found by the cgroup, or by the sandbox's own uid
        # (without either, the policy keeps them from leaving the group).
        reaped = self.wait_status is not None  # then the pid may already name someone else
        if not reaped:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.lock.cgroup is not None:
            if not self.lock.cgroup.kill() and self.error is None:
                self.error = "some processes of the run could not be killed (stuck in the kernel?)"
        elif self.lock.uid >= 0:
            kill_uid(self.lock.uid, self.lock.gid)
        elif not reaped and self.supervision is not None and self.supervision.made_groups:
            # process groups of its own (timeout, job control) stay in the session it cannot leave
            kill_session(self.pid)

    def reap(self) -> None:
        """The leader has exited: kill the rest of the tree, then collect its status."""
        if self.wait_status is not None:
            return
        self.ended_at = time.monotonic()
        self.kill_tree()
        try:
            _, self.wait_status, self.rusage = os.wait4(self.pid, 0)
        except ChildProcessError:
            # reaped by an earlier reap cut short (a signal handler's exception right after the
            # wait): the status is lost; the tree is dead all the same (killed above)
            self.wait_status, self.rusage = 9, resource.getrusage(resource.RUSAGE_CHILDREN)
            self.error = self.error or "evalbox was interrupted while collecting the run's exit status, which is lost"
        if self.pidfd >= 0:
            fd, self.pidfd = self.pidfd, -1  # (forgotten first: never closed twice)
            os.close(fd)
        if self.lock.jail_flags:
            # The init exits only once every other process of its namespace is dead; its own
            # status and rusage are not the program's (it shares the caller's memory).
            record = read_init_record(self.init_report)
            if record is not None:
                self.wait_status, self.rusage = record.status, record
            else:  # killed from outside before the program ended (caller's guard, OOM killer)
                self.rusage = InitRecord(self.wait_status, self.rusage.ru_utime, self.rusage.ru_stime, 0)
            return
        # (every process left in the group got SIGKILL in kill_tree: a group kill reaches children
        # forked meanwhile too, so nothing is waited for here, in the event loop)

    def max_rss(self) -> int:
        """The program's peak memory: what its memory cgroup was charged at most, else the largest
        resident set among its processes when that is above what the caller's own memory could
        have contributed (the CLONE_VM spawn child's figure includes the caller's peak), else 0
        (unknown)."""
        group = self.lock.cgroup
        peak = group.peak_memory() if group is not None else None
        if peak is not None:
            return peak
        # (in a jail the init's record covers the program's processes only, but the program's
        # first process shared the caller's memory until its exec there too, and the kernel
        # counts that peak in its maxrss)
        rss = self.rusage.ru_maxrss * 1024
        return rss if rss > self.caller_peak_rss else 0

    def output(self) -> Output:
        assert self.wait_status is not None and self.rusage is not None and self.ended_at is not None
        plan = self.plan
        status_code = self.wait_status
        exit_code = os.waitstatus_to_exitcode(status_code)
        sig = -exit_code if exit_code < 0 else None
        code = exit_code if exit_code >= 0 else None
        cpu = self.rusage.ru_utime + self.rusage.ru_stime
        tree_cpu = self.tree_cpu_seconds()
        if tree_cpu is not None:
            cpu = max(cpu, tree_cpu)
        group = self.lock.cgroup
        status = self.kill_reason
        if status is None and (self.stdout_truncated or self.stderr_truncated):
            status = Status.OUTPUT_LIMIT  # the cap was hit while draining, after the program exited
        if status is None and group is not None and group.oom_killed():
            status = Status.MEMORY_LIMIT
        if status is None and plan.cpu_time is not None:
            # a program that caught SIGXCPU and then failed may show less than the limit (see
            # CPU_TICK_SKEW); one that succeeded is never reported as over it
            failed = sig is not None or (code or 0) != 0
            slack = max(CPU_TICK_SLACK, CPU_TICK_SKEW * plan.cpu_time)
            if sig == signal.SIGXCPU or cpu >= plan.cpu_time or (failed and cpu >= plan.cpu_time - slack):
                status = Status.CPU_LIMIT
        if status is None and self.supervision is not None and self.supervision.memory_refused:
            # RLIMIT_AS (no memory cgroup): the listener saw an allocation the limit refused; the
            # verdict rests on that, never on what the program printed about it
            if sig is not None or (code or 0) != 0:
                status = Status.MEMORY_LIMIT
        blocked = self.supervision.blocked if self.supervision else []
        if sig == signal.SIGKILL and blocked and self.kill_reason is None and status is None:
            # killed for a forbidden call (by evalbox, which is the only one to SIGKILL a run
            # without a kill reason): reported as the SIGSYS a seccomp kill gives
            sig = int(signal.SIGSYS)
        if status is None:
            status = Status.SIGNALED if sig is not None else Status.EXITED
        return Output(
            stdout=bytes(self.stdout),
            stderr=bytes(self.stderr),
            status=status,
            exit_code=code,
            signal=sig,
            wall_time=self.ended_at - self.started,
            cpu_time=cpu,
            max_rss=self.max_rss(),
            stdout_truncated=self.stdout_truncated,
            stderr_truncated=self.stderr_truncated,
            protections=self.lock.protections,
            syscalls=tuple(self.supervision.records) if self.supervision else (),
            error=self.error,
            warm=self.warm,
            blocked_syscall=blocked[0][0] if blocked else None,
            files=self._collected(),
        )

    def _collected(self) -> dict[str, bytes]:
        # Only once the whole tree is dead: nothing may change the files while they are read.
        if not self.plan.collect or self.error is not None:
            return {}
        return collect(os.path.join(self.lock.workspace.root, WORK_DIR), self.plan.collect, COLLECT_BUDGET)

    def close(self) -> None:
        """Release every fd and the workspace/cgroup. The tree must already be dead and reaped."""
        if self.supervision is not None:
            self.supervision.close()
        self._close_fds("stdin_w", "stdout_r", "stderr_r", "pidfd", "init_report")
        # Without the jail, a caller that is a subreaper or PID 1 inherited the run's orphans:
        # reap their zombies (before the uid is given up: nothing of it may persist).
        leader = self.pid
        if not self.lock.jail_flags and leader > 0 and orphans.caller_adopts():
            orphans.reap(self.lock.uid, leader)
        # Order matters if the caller dies midway: the guard may only forget the run once its
        # processes, cgroup and workspace are gone, and the uid lease is given up last of all.
        self.lock.close(keep_uid=True)
        watchdog.unregister(str(self.pid))
        self.lock.release_uid()
        slot, self.slot = self.slot, None
        if slot is not None:
            self.launcher.release_slot(slot)  # recycled only if provably clean
        self.released = True
