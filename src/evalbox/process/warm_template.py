# The warm Python template: source text that evalbox runs with `python -s -c` (see warm.py);
# evalbox itself never imports this file.
#
# The template is started fresh by evalbox with a clean environment and never runs user code. It
# imports the preload modules once, then serves requests on its stdin (a SOCK_SEQPACKET socket
# from evalbox): each request carries a run's lockdown and fds; the template forks a copy whose
# parent is evalbox's process (CLONE_PARENT), answers with the copy's pid and waits for the next
# request. The copy applies the whole lockdown to itself (the same C code as a cold spawn), then
# makes the interpreter look as if it had just started `python -s SCRIPT ARGS...` and runs the
# script as __main__. A copy is never reused: one run, then it exits.
#
# argv: -c, path of evalbox's _spawn extension, comma-separated preload modules, evalbox's pid,
# the number of the prctl system call.
import os
import sys

_template_globals = globals()


def _load_spawn(path):
    import importlib.machinery
    import importlib.util

    if not any(path.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        raise ImportError(f"evalbox's extension {os.path.basename(path)} was not built for this interpreter")
    loader = importlib.machinery.ExtensionFileLoader("_spawn", path)
    spec = importlib.util.spec_from_file_location("_spawn", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules.pop("_spawn", None)
    return module


def _serve():
    """Answer requests until evalbox closes the socket. Returns (request, fds) in a fresh copy."""
    control = socket.socket(fileno=os.dup(0))  # fd 0 becomes /dev/null: no run can read it
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    failed = _preload_failures
    try:
        spawn = _load_spawn(sys.argv[1])
        # Die with evalbox's process (its thread that started us), and make sure it still lives.
        spawn.syscall(int(sys.argv[4]), 1, 9)  # prctl(PR_SET_PDEATHSIG, SIGKILL)
        if os.getppid() != int(sys.argv[3]):
            sys.exit(1)
        # Empty the capability bounding set once, here (it limits only what an exec could gain,
        # and the template never execs): its copies and launchers inherit it, and each run's
        # lockdown then skips the drop (41 credential commits, ~60 us a run). Without CAP_SETPCAP
        # nothing changes: each run's lockdown drops what it can, as before.
        try:
            for cap in range(64):
                spawn.syscall(int(sys.argv[4]), 24, cap)  # prctl(PR_CAPBSET_DROP, cap)
        except OSError:  # EINVAL past the last capability; EPERM without CAP_SETPCAP
            pass
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:  # a fork copies only the calling thread: refuse rather than break
            raise RuntimeError(f"the preloaded modules started {threads - 1} thread(s); a template must stay "
                               "single-threaded (drop the module that starts threads from preload)")
    except Exception as e:  # noqa: BLE001
        control.send(marshal.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    control.send(marshal.dumps({"ok": True, "failed": failed, "version": list(sys.version_info[:2])}))
    # What a copy drops from sys.modules, found once here rather than in each copy.
    _template_only[:] = set(sys.modules) - _preloaded_modules - set(sys.builtin_module_names)
    _template_only.append(len(sys.modules))
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1 << 20, 16)
        except InterruptedError:
            continue
        if not msg:
            os._exit(0)  # evalbox is done with us (a full interpreter teardown would copy every page)
        request = marshal.loads(msg)
        if "exec" in request:  # a slot's launcher starting a program by exec: the cold spawn, from here
            control.send(marshal.dumps({**_spawn_exec(spawn, request["exec"], fds), "id": request.get("id")}))
            continue
        if "exec_channel" in request:  # the same, its request (a jail's root: any size) on a channel
            msg, fds = spawn.recv_request(fds[0])
            control.send(marshal.dumps({**_spawn_exec(spawn, marshal.loads(msg)["exec"], fds), "id": request.get("id")}))
            del msg
            continue
        # A run's copy waits at this gate until its pid reached evalbox's end of the channel: a
        # copy whose pid evalbox never got (this server died or was too slow) must never run.
        gate = os.pipe() if request.get("run") else None
        try:
            # a jailed run: its init (in this process's memory, running no Python) is born in the
            # jail's new namespaces as their PID 1, and forks the copy that becomes the program
            # (PID 2), which returns here
            jail = request.get("jail", 0)
            pid, init_sock = spawn.fork_jail(jail) if jail else (spawn.fork_sibling(), -1)
        except OSError as e:
            _answer(control, request, fds, {"error": f"fork: {e}"})
            if gate:
                os.close(gate[0])
                os.close(gate[1])
            continue
        if pid == 0 and request.get("slot"):
            # A resident launcher for one slot: joins the slot's cgroup once (its runs are born
            # inside it: no per-run migration) and serves that slot's runs on its own socket.
            control.close()
            control = socket.socket(fileno=fds[0])
            spawn.syscall(int(sys.argv[4]), 1, 9)  # prctl(PR_SET_PDEATHSIG, SIGKILL): not inherited
            if os.getppid() != int(sys.argv[3]):
                os._exit(1)
            for fd in fds[1:]:
                os.write(fd, b"0")
                os.close(fd)
            try:
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write("-1000")  # the OOM killer takes the run, never the launcher
                _resident.append("exempt")
            except OSError:  # no CAP_SYS_RESOURCE: a run's copy maps all the launcher has, and more
                _resident.append("plain")
            # (with credentials naming this launcher: should its server have died before naming
            # it, evalbox still finds which child to reap)
            control.sendmsg([marshal.dumps({"ready": True})], [_credentials(os.getpid())])
            continue
        if pid == 0:
            control.close()
            os.close(gate[1])
            if os.read(gate[0], 1) != b"1":
                # (end of file: the server died or evalbox had given up on the run)
                _name_stray(fds[0], jail)
                os._exit(0)
            os.close(gate[0])
            if "exempt" in _resident:  # a run must not inherit the launcher's exemption
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write("0")
            # The run's own request (environment, arguments, lockdown, fds) comes over a channel
            # of its own, read here in the copy: it never enters the template's (or a launcher's)
            # memory, which later copies inherit. (Read in C: every page of the template that
            # Python touches here is copied, ~2.5 us each.)
            msg, fds = spawn.recv_request(fds[0])
            return spawn, marshal.loads(msg), fds, init_sock
        answered = _answer(control, request, fds, {"pid": pid})
        if gate:
            os.close(gate[0])
            if answered:
                os.write(gate[1], b"1")
            os.close(gate[1])


def _name_stray(channel, jail):
    """A copy whose pid evalbox never got is still evalbox's child (CLONE_PARENT; in a jail, its
    init is): say so on the run's channel, with credentials naming that child (this process, or
    PID 1 of the jail: the kernel gives evalbox its pid as evalbox sees it), so that evalbox can
    reap it after its exit (PendingStart.settle)."""
    try:
        with socket.socket(fileno=os.dup(channel)) as sock:
            sock.sendmsg([marshal.dumps({"stray": True})], [_credentials(1 if jail else os.getpid())])
    except OSError:
        pass  # (evalbox closed the channel: it settled without us; or no right to name the init)


def _credentials(pid):
    """SCM_CREDENTIALS naming `pid` (of this pid namespace): evalbox receives it as its own pid."""
    creds = b"".join(v.to_bytes(4, sys.byteorder, signed=True) for v in (pid, os.getuid(), os.getgid()))
    return socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds


def _answer(control, request, fds, answer):
    """A run's answer goes on its own channel (fds[0]: evalbox does not wait for it there), any
    other request's on the control socket (where evalbox matches answers by id); then the fds
    of the request are closed. False if it could not be sent."""
    try:
        if request.get("run") and fds:
            os.write(fds[0], marshal.dumps(answer))  # (one record of the SOCK_SEQPACKET channel)
        else:
            control.send(marshal.dumps({**answer, "id": request.get("id")}))
        return True
    except OSError:
        return False  # evalbox gave up on this run (its channel is closed)
    finally:
        for fd in fds:
            os.close(fd)


_resident = []
_template_only = []


def _spawn_exec(spawn, x, fds):
    """Clone (vfork-style, as the run's sibling), lock down and exec, exactly as a cold spawn; in a
    jail, the init is cloned (the run's sibling) and answers once the program runs, as a cold
    jailed spawn does."""
    stdio, errpipe, rest = fds[:3], fds[3], fds[4:]
    report_fd = rest.pop(0) if x["jail_flags"] else -1
    landlock_fd = rest.pop(0) if x["landlock"] else -1
    listener = rest.pop(0) if x["listener"] else -1
    jail = {}
    if x["jail_flags"]:
        jail = dict(jail_flags=x["jail_flags"], hostname=x["hostname"], root=x["root"], root_rights=x["root_rights"],
                    proc_rights=x["proc_rights"], netns_fd=rest.pop(0) if x["netns"] else -1,
                    template_fd=rest.pop(0) if x["template"] else -1, report_fd=report_fd)
    exempt = "exempt" in _resident
    try:
        if exempt:  # the OOM exemption would survive the exec: not while the run is cloned
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("0")
        started = spawn.spawn(
            path=x["path"], argv=x["argv"], envp=x["envp"], cwd=x["cwd"], stdio=stdio, errpipe=errpipe,
            parent_pid=x["parent_pid"], cgroup_fds=[], rlimits=x["rlimits"],
            drop_bounding_set=x["drop_bounding_set"], last_cap=x["last_cap"], securebits=x["securebits"],
            uid=x["uid"], gid=x["gid"], landlock_fd=landlock_fd, filters=x["filters"], listener_sock=listener,
            umask=x["umask"], overlays=x["overlays"], magic=x["magic"], sibling=True, **jail,
        )
        os.close(started[1])
        return {"pid": started[0], "report": started[2] if jail else b""}
    except OSError as e:
        return {"error": f"spawn: {e}"}
    finally:
        if exempt:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("-1000")
        for fd in fds:
            os.close(fd)


def _lock_down(spawn, x, fds, init_sock):
    """Apply a run's whole lockdown (`x`: warm._lockdown_fields, `fds` as evalbox sent them) to
    this copy with the C code of a cold spawn; returns the error pipe (in a jail: the socket to
    the init). (Also used as is by `evalbox bench`'s warm floor.)"""
    stdio, errpipe, rest = fds[:3], fds[3], fds[4:]
    landlock_fd = rest.pop(0) if x["landlock"] else -1
    listener = rest.pop(0) if x["listener"] else -1
    jail = {}
    if x["jail_flags"]:  # this copy is PID 2 of the jail's namespaces: it builds them, then locks down
        jail = dict(jail_flags=x["jail_flags"], hostname=x["hostname"], root=x["root"], root_rights=x["root_rights"],
                    proc_rights=x["proc_rights"], netns_fd=rest.pop(0) if x["netns"] else -1,
                    template_fd=rest.pop(0) if x["template"] else -1, alive_fd=rest.pop(0), init_sock=init_sock)
    return spawn.lockdown_self(
        cwd=x["cwd"], stdio=stdio, errpipe=errpipe, parent_pid=x["parent_pid"], cgroup_fds=rest,
        rlimits=x["rlimits"], drop_bounding_set=x["drop_bounding_set"], last_cap=x["last_cap"],
        securebits=x["securebits"], uid=x["uid"], gid=x["gid"], landlock_fd=landlock_fd,
        filters=x["filters"], listener_sock=listener, umask=x["umask"], overlays=x["overlays"], **jail,
    )


def _start_program(spawn, req, fds, init_sock):
    """In the fresh copy: lock down, then look like `python -s SCRIPT ARGS` just started. (Uses the
    template's module-level imports: they are gone from sys.modules by now.)"""

    x = req["run"]
    errpipe = _lock_down(spawn, x, fds, init_sock)
    # What CPython sets up at start (the lockdown put every disposition back to the default).
    # (_signal, not signal: the latter's enum conversions touch, and so copy, ~40 pages)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_IGN)
    # The run's environment, set as os.environ's own methods would (the C library's and the
    # mapping's), without their Python-level calls per variable (pages touched: copied).
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict) and os.environb._data is data:
        for key in list(data):
            os.unsetenv(key)
        data.clear()
        for item in req["env"]:
            key, _, value = item.partition(b"=")
            os.putenv(key, value)
            data[key] = value
    else:  # (an interpreter whose os module keeps them otherwise)
        os.environ.clear()
        for item in req["env"]:
            key, _, value = item.partition(b"=")
            os.environb[key] = value
    time.tzset()  # TZ may have come with the run's environment
    if os.environ.get("PYTHONUNBUFFERED"):  # as `python -u`: unbuffered binary layer, write-through text
        for fd, name in ((1, "stdout"), (2, "stderr")):
            old = getattr(sys, name)
            raw = io.FileIO(fd, "w", closefd=False)
            raw.name = f"<{name}>"
            text = io.TextIOWrapper(raw, encoding=old.encoding, errors=old.errors, write_through=True)
            text.mode = "w"
            setattr(sys, name, text)
            setattr(sys, f"__{name}__", text)
    for name in ("random", "numpy.random"):  # fresh state, whatever the fork hooks did
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "seed"):
            module.seed()
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # found again from this run's TMPDIR
    script = req["script"]
    sys.argv = req["argv"]
    sys.orig_argv = req["orig_argv"]
    sys.path.insert(0, os.path.dirname(script))
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __cached__=None, __builtins__=__builtins__, __annotations__={},
                         __loader__=importlib.machinery.SourceFileLoader("__main__", script), __spec__=None)
    sys.modules["__main__"] = main
    if x["jail_flags"]:  # the init's word that the program runs (STEP_STARTED, 0); end of file alone: it died
        os.write(errpipe, bytes(8))
    os.close(errpipe)  # the caller now knows the program runs
    return main


def _exit_status(e):
    """The exit status CPython gives an uncaught SystemExit (printing a non-integer code)."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code if -(1 << 31) <= code < (1 << 31) else -1
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001
        pass
    return 1


def _finish(status, by_sigint=False):
    """What CPython's finalization does that a program can see, then exit. The template's own
    objects are left alone: tearing the interpreter down would touch (and so copy) every page
    the copy shares with the template, ~20 times the cost of the run itself."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()  # wait for the program's non-daemon threads
        except BaseException:  # noqa: BLE001
            pass
    atexit._run_exitfuncs()
    main = sys.modules.get("__main__")
    if main is not None:
        main.__dict__.clear()  # the program's objects are finalized (__del__, unclosed files)
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            if stream is sys.stdout and not status:
                status = 120  # as CPython when stdout cannot be flushed at exit
    if by_sigint:  # CPython ends by SIGINT after an uncaught KeyboardInterrupt
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGINT)
    os._exit(status & 0xFF if status >= 0 else 255)


def _read_script(main):
    try:
        with open(main.__file__, "rb") as f:
            return compile(f.read(), main.__file__, "exec")
    except OSError as e:
        sys.stderr.write(f"{sys.orig_argv[0]}: can't open file {main.__file__!r}: [Errno {e.errno}] {e.strerror}\n")
        sys.stderr.flush()
        os._exit(2)


if "" in sys.path:
    sys.path.remove("")  # -c put the cwd first: nothing may be imported from there
_startup_modules = set(sys.modules)
_preload = [name for name in sys.argv[2].split(",") if name]
_preload_failures = []
for _name in _preload:
    try:
        __import__(_name)
    except Exception as _e:  # noqa: BLE001 - reported to evalbox
        _preload_failures.append(f"{_name}: {type(_e).__name__}: {_e}")
_preloaded_modules = set(sys.modules)
import _signal, atexit, gc, importlib.machinery, importlib.util, io, marshal, socket, time, types  # noqa: E401,E402

# Copies must not walk the template's objects: a collection touches every object it scans, and
# each touched page is copied. Frozen objects are ignored by the collector.
gc.collect()
gc.freeze()
_spawn_module, _request, _fds, _init_sock = _serve()
# Modules only the template itself needed go; the program imports them afresh if it wants them.
if len(sys.modules) != _template_only.pop():  # the template imported more while serving
    _template_only = set(sys.modules) - _preloaded_modules - set(sys.builtin_module_names)
for _name in _template_only:
    sys.modules.pop(_name, None)
_main = _start_program(_spawn_module, _request, _fds, _init_sock)
del _spawn_module, _request, _fds, _init_sock, _serve, _start_program, _lock_down, _load_spawn, _name, _template_only
try:
    exec(_read_script(_main), _main.__dict__)
    _status, _by_sigint = 0, False
except SystemExit as _e:
    _status, _by_sigint = _exit_status(_e), False
except BaseException as _e:  # noqa: BLE001 - what CPython does with an uncaught exception
    _tb = _e.__traceback__
    while _tb is not None and _tb.tb_frame.f_globals is _template_globals:
        _tb = _tb.tb_next  # the template's own frame is not the program's
    _e.__traceback__ = _tb
    sys.last_type, sys.last_value, sys.last_traceback = type(_e), _e, _tb
    sys.excepthook(type(_e), _e, _tb)
    _status, _by_sigint = 1, isinstance(_e, KeyboardInterrupt)
    del _e, _tb
_finish(_status, _by_sigint)
