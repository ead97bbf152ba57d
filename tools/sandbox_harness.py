"""The judge's test harness: runs inside the sandbox, in two processes that share nothing but two pipes.

It is not imported by prefsmith: `tools.jail` passes this file's text to the sandboxed interpreter with `-c`,
so it must run on any Python 3.8+ with the standard library alone, and imports only built-in modules (its
start-up is most of a sandbox call's cost).

The process the sandbox starts is the trusted one, T. Before it reads anything it forks C, the process that
will run the candidate's code; C keeps only stdout/stderr and its ends of two private pipes (the report pipe
and stdin are closed there, and without /proc it cannot reopen them). Then T:

1. reads its request (marshal: the candidate's code, the test statements the host split the tests into, the
   limits and a per-call key) from stdin, sets the resource limits and compiles the code and every test
   statement;
2. sends C the compiled code and the limits; C sets them, installs an audit hook and runs the code;
3. evaluates each test statement itself, with the normal builtins, in a namespace whose missing names it asks
   C for: plain values cross as `repr` text that T reads with a literal-only evaluator (never marshal, pickle
   or eval), the candidate's functions become stubs whose calls C runs and answers the same way;
4. reports each outcome (a failure with the line of the tests it stopped at: in `check(candidate)`, the
   assert that failed) as a line signed with HMAC-SHA256 under the key on the report pipe (which C never
   had), ending with an "E" record; if C dies, hangs past the wall clock or breaks the protocol, an "X"
   record says so instead and there is no "E";
5. kills C and leaves with os._exit(0).

So a test such as `assert f(2) == 4` compares plain data inside T: the candidate's code can only make it pass
by answering the right values. Objects that are not plain data (instances of the candidate's classes, modules
aside) cannot cross: a test that needs one fails with a reason that says so.
"""

import _ast
import _signal  # not `signal`: that one imports enum, a third of the start-up
import marshal
import os
import resource
import sys
import time
import types  # noqa: F401 - imported before the audit hook: its module code reads a traceback's frame

LIMIT = 1 << 20  # the largest message either side accepts: 1 MiB


def plain(text):
    """The value of `text` if it is a literal of plain data (what repr gives for None, bools, numbers,
    strings, bytes, tuples, lists, sets and dicts of them), else ValueError. Evaluates nothing."""
    tree = compile(text, "<reply>", "eval", _ast.PyCF_ONLY_AST, dont_inherit=True)

    def value(node):
        kind = type(node)
        if kind is _ast.Constant and type(node.value) in (int, float, complex, str, bytes, bool, type(None)):
            return node.value
        if kind is _ast.Tuple:
            return tuple(value(item) for item in node.elts)
        if kind is _ast.List:
            return [value(item) for item in node.elts]
        if kind is _ast.Set:
            return {value(item) for item in node.elts}
        if kind is _ast.Dict and None not in node.keys:
            return {value(key): value(item) for key, item in zip(node.keys, node.values)}  # noqa: B905 - 3.8 has no strict
        if kind is _ast.UnaryOp and type(node.op) in (_ast.USub, _ast.UAdd):
            operand = value(node.operand)
            if type(operand) in (int, float, complex):
                return -operand if type(node.op) is _ast.USub else operand
        if kind is _ast.BinOp and type(node.op) in (_ast.Add, _ast.Sub):  # complex numbers: (1+2j)
            left, right = value(node.left), value(node.right)
            if type(left) in (int, float) and type(right) is complex:
                return left + right if type(node.op) is _ast.Add else left - right
        raise ValueError("not plain data")

    return value(tree.body)  # type: ignore[attr-defined]  # an Expression, for "eval"


def set_limits(limits, processes):
    """The per-process rlimits of the sandbox's processes; `processes` caps this sandbox's process count."""
    for name, pair in (
        ("RLIMIT_CPU", (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
        ("RLIMIT_AS", (limits["memory_bytes"], limits["memory_bytes"])),
        ("RLIMIT_FSIZE", (limits["file_bytes"], limits["file_bytes"])),
        ("RLIMIT_NOFILE", (64, 64)),
        ("RLIMIT_CORE", (0, 0)),
        ("RLIMIT_NPROC", (processes, processes)),
    ):
        resource.setrlimit(getattr(resource, name), pair)


def candidate(requests, replies):  # C: never returns
    low, high = sorted((requests, replies))  # close everything but the two pipes: the report pipe above all
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    read, write, exit_now, run, text, kind, base = os.read, os.write, os._exit, exec, str, type, BaseException
    module, is_callable, represent, length, encoded = type(os), callable, repr, len, str.encode
    loads, getpid = marshal.loads, os.getpid
    me = getpid()

    def receive():
        header = b""
        while length(header) < 10:
            chunk = read(requests, 10 - length(header))
            if not chunk:
                exit_now(0)  # T is done (or gone)
            header += chunk
        size = int(header)
        data = b""
        while length(data) < size:
            chunk = read(requests, min(size - length(data), 1 << 16))
            if not chunk:
                exit_now(0)
            data += chunk
        return loads(data)

    def send(tag, data):
        payload = encoded(tag + "\n" + data, "utf-8", "backslashreplace")
        if length(payload) > LIMIT:
            payload = encoded("error\n" + represent("the code returned more than 1 MiB of data"), "utf-8")
        message = b"%010d" % length(payload) + payload
        while message:
            message = message[write(replies, message):]

    def raised(exc):
        try:
            message = text(exc)[:1000]
        except base:  # a candidate's __str__ may raise anything
            message = "?"
        try:
            name = text(kind(exc).__name__)
        except base:
            name = "BaseException"
        send("raised", represent((name, message)))

    def answer(value):
        try:
            literal = represent(value)
            if length(literal) > LIMIT:
                send("error", represent("the code returned more than 1 MiB of data"))
            elif plain(literal) == value:
                send("value", literal)
            else:
                raise ValueError
        except base:
            try:
                name = text(kind(value).__name__)
            except base:
                name = "?"
            send("error", represent("the code returned an object the tests cannot inspect: " + name))

    setup = receive()
    limits = setup["limits"]
    # RLIMIT_NPROC counts in the sandbox's own user namespace: this sandbox's processes, not every `nobody`'s.
    # T and C are two of them; the code may start `processes` more.
    set_limits(limits, limits["processes"] + 2)
    code = loads(setup["code"])
    confine = setup["confine"]
    del setup
    root = os.path.realpath(os.getcwd())
    realpath, join, decode, getcwd = os.path.realpath, os.path.join, os.fsdecode, os.getcwd
    frame_events = frozenset(
        ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
         "gc.get_referrers", "gc.get_referents", "sys.addaudithook")
    )
    frame_attributes = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))

    def inside(path):
        if isinstance(path, int):
            return True
        full = realpath(join(getcwd(), decode(path)))  # the cwd now: os.chdir must not move the fence
        return full == root or full.startswith(root + "/")

    def hook(event, args, _events=frame_events, _attributes=frame_attributes):
        # Without the kernel's layers (weaker isolation, explicitly allowed): the old in-process rules, a
        # best effort only; code in this process can get round them (dir_fd, for one).
        if confine:
            if event.startswith(("socket.", "os.fork", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
                                 "subprocess.", "os.kill", "os.killpg", "pty.")):
                raise PermissionError("sandbox: " + event + " is not allowed without kernel isolation")
            if event == "open" and args[2] and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
                if not inside(args[0]):
                    raise PermissionError("sandbox: writing outside the work directory is not allowed")
            if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                         "os.truncate", "shutil.rmtree", "os.utime") and not all(
                inside(arg) for arg in args[:2] if isinstance(arg, (str, bytes))
            ):
                raise PermissionError("sandbox: " + event + " outside the work directory is not allowed")
        # ValueError, not PermissionError: namedtuple, enum, typing and logging catch it and carry on.
        if event in _events:
            raise ValueError("sandbox: " + event + " is not available to candidate code")
        if event == "object.__getattr__" and args[1] in _attributes:
            raise ValueError("sandbox: frame introspection is not available to candidate code")
        if event == "import" and args[0] in ("_ctypes", "ctypes"):
            raise ImportError("sandbox: ctypes is not available to candidate code")

    sys.addaudithook(hook)
    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        run(code, namespace)
    except base as exc:  # SystemExit and KeyboardInterrupt included: leaving early fails
        if getpid() == me:
            raised(exc)
        exit_now(0)
    if getpid() != me:  # a process the code forked ran off its end: only C speaks for the code
        exit_now(0)
    send("ready", "None")
    while True:
        request = receive()
        try:
            if request[0] == "get":
                if request[1] not in namespace:
                    send("missing", "None")
                    continue
                value = namespace[request[1]]
                if kind(value) is module:
                    send("module", represent(text(value.__name__)))
                elif is_callable(value):
                    send("callable", "None")
                else:
                    answer(value)
            else:  # ("call", name, args, kwargs)
                function = namespace[request[1]]
                try:
                    value = function(*request[2], **request[3])
                except base as exc:
                    raised(exc)
                    continue
                answer(value)
        except base as exc:
            raised(exc)


def main():  # T, the trusted process: one straight-line sequence
    started = time.monotonic()
    requests, to_candidate = os.pipe()
    from_candidate, replies = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(to_candidate)
        os.close(from_candidate)
        try:
            candidate(requests, replies)
        finally:
            os._exit(0)
    os.close(requests)
    os.close(replies)

    request = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        request += chunk
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    request = marshal.loads(request)
    key = request.pop("key")
    report_fd = request["report_fd"]
    limits = request["limits"]

    try:  # built-in C SHA-256 (3.12 renamed it), no OpenSSL to load
        from _sha2 import sha256
    except ImportError:
        from _sha256 import sha256
    # HMAC-SHA256 (RFC 2104) by hand. C never had the report pipe; the signature is defence in depth.
    key = key if len(key) <= 64 else sha256(key).digest()
    inner = bytes(byte ^ 0x36 for byte in key.ljust(64, b"\0"))
    outer = bytes(byte ^ 0x5C for byte in key.ljust(64, b"\0"))

    def report(*fields):
        record = "\t".join(str(field).replace("\t", " ").replace("\n", " ")[:300] for field in fields)
        data = record.encode("utf-8", "replace")
        mac = sha256(outer + sha256(inner + data).digest()).hexdigest()
        os.write(report_fd, data + b"\t" + mac.encode("ascii") + b"\n")

    def finish(*record):  # the last word: an "X" record (C gone, hung or garbled) or "E"
        report(*record)
        try:
            os.kill(child, _signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)

    def describe(exc):
        if type(exc) is Remote:
            return exc.args[0]
        try:
            message = str(exc)
        except BaseException:
            message = "?"
        return type(exc).__name__ + ": " + message

    def stopped_at(exc):
        # The deepest line of the tests in the traceback: inside `check(candidate)`, the assert that failed.
        # T's own frames only: what the code raised crossed as text and was raised again here.
        line = 0
        trace = exc.__traceback__
        while trace is not None:
            if trace.tb_frame.f_code.co_filename == "tests.py":
                line = trace.tb_lineno
            trace = trace.tb_next
        return line

    class Remote(Exception):
        """An exception the candidate's code raised that has no built-in counterpart here."""

    def gone():
        # C closed its end: wait briefly for its status (the pipe closes a moment before it is reaped).
        for _ in range(50):
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                if os.WIFSIGNALED(status):
                    finish("X", "signal", os.WTERMSIG(status))
                finish("X", "exit", os.WEXITSTATUS(status) if os.WIFEXITED(status) else status)
            time.sleep(0.01)
        finish("X", "channel", "the code's process closed the channel to the tests")

    def expired(number, frame):
        finish("X", "timeout", "")

    def tell(message):
        data = marshal.dumps(message)
        message = b"%010d" % len(data) + data
        try:
            while message:
                message = message[os.write(to_candidate, message):]
        except OSError:
            gone()

    def exactly(size):
        received = b""
        while len(received) < size:
            chunk = os.read(from_candidate, min(size - len(received), 1 << 16))
            if not chunk:
                gone()
            received += chunk
        return received

    def hear():  # one message: ten digits of length, then "tag\nliteral"
        header = exactly(10)
        if not header.isdigit() or int(header) > LIMIT:
            finish("X", "channel", "the code's process sent a garbled or oversized message")
        try:
            tag, _, literal = exactly(int(header)).decode("utf-8").partition("\n")
            return tag, plain(literal)
        except BaseException:  # UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError...
            finish("X", "channel", "the code's process sent a garbled message")

    def ask(message):
        tell(message)
        return hear()

    def fail(payload):
        name, message = payload
        cls = getattr(builtins, name, None)
        # The built-in type, so `except ValueError` in a test works; not StopIteration, which would end a
        # builtin's loop (`all(map(f, xs))`) as if the code had answered.
        if (isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins"
                and not issubclass(cls, (StopIteration, StopAsyncIteration))):
            try:
                error = cls(message)
            except BaseException:
                error = None
            if error is not None:
                raise error
        raise Remote(name + ": " + message)

    def call(name, args, kwargs):
        try:
            marshal.dumps((args, kwargs))
        except ValueError:
            raise TypeError("the tests passed " + name + "() an argument that is not plain data") from None
        tag, payload = ask(("call", name, args, kwargs))
        if tag == "value":
            return payload
        if tag == "raised" and type(payload) is tuple and len(payload) == 2:
            fail(payload)
        raise TypeError(str(payload))

    class Function:
        __slots__ = ("name",)

        def __init__(self, name):
            self.name = name

        def __call__(self, *args, **kwargs):
            return call(self.name, args, kwargs)

        def __repr__(self):
            return "<the code's " + self.name + ">"

    import builtins

    misses = set()  # per test statement: names C does not define, and stubs for those it does
    functions: dict = {}

    class Names(dict):
        """The tests' namespace: what they define themselves, else what the candidate's code defined."""

        def __missing__(self, name):
            if name in misses or name.startswith("__"):
                raise KeyError(name)
            if name in functions:  # C resolves the name again at each call: a stub may be reused
                return functions[name]
            tag, payload = ask(("get", name))
            if tag == "missing":
                misses.add(name)
                raise KeyError(name)  # the builtins come next
            if hasattr(builtins, name):
                raise TypeError("the code redefines " + name + ", a builtin the tests use")
            if tag == "value":
                return payload
            if tag == "callable":
                functions[name] = Function(name)
                return functions[name]
            if tag == "module" and type(payload) is str:  # the tests get the standard library's own copy
                if payload in sys.modules or (
                    payload.partition(".")[0] in getattr(sys, "stdlib_module_names", ())
                    and payload.partition(".")[0] not in ("antigravity", "this", "idlelib", "tkinter", "turtle")
                ):
                    __import__(payload)
                    return sys.modules[payload]
                raise TypeError("the tests cannot use the code's module " + payload)
            if tag == "raised" and type(payload) is tuple and len(payload) == 2:
                fail(payload)
            raise TypeError(str(payload))

    set_limits(limits, 0)  # T starts nothing more
    _signal.signal(_signal.SIGALRM, expired)
    _signal.setitimer(_signal.ITIMER_REAL, max(0.01, limits["wall_seconds"] - 0.1 - (time.monotonic() - started)))

    try:
        code = compile(request["code"], "candidate.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        report("C", "fail", describe(exc))
        finish("E", 0)
    statements = []
    lines = {}  # each line of the tests by number: a failure names the line it stopped at
    try:
        # The host split the tests into top-level statements; the blank lines keep their line numbers.
        for source, line in request["tests"]:
            padded = "\n" * (line - 1) + source
            statements.append((compile(padded, "tests.py", "exec", dont_inherit=True), source.splitlines()[0]))
            for offset, text in enumerate(source.splitlines()):
                lines[line + offset] = text.strip()
    except (SyntaxError, ValueError) as exc:
        report("C", "fail", "the tests do not compile: " + describe(exc))
        finish("E", 0)
    setup = {"code": marshal.dumps(code), "limits": limits, "confine": request["confine"]}
    del request
    report("S", len(statements))
    tell(setup)
    tag, payload = hear()  # C's first word: "ready", or what the code raised
    if tag == "raised" and type(payload) is tuple and len(payload) == 2:
        report("C", "fail", str(payload[0]) + ": " + str(payload[1]))
        finish("E", 0)
    if tag != "ready":
        finish("X", "channel", "the code's process sent a garbled message")
    report("C", "ok", "")
    names = Names({"__name__": "__main__", "__builtins__": builtins})
    for index, (statement, source) in enumerate(statements):
        misses.clear()
        functions.clear()
        try:
            exec(statement, names)
        except BaseException as exc:  # any way out of a test but its end is a failure
            line = stopped_at(exc)
            report("T", index, "fail", source, describe(exc), line, lines.get(line, ""))
        else:
            report("T", index, "pass", source, "", 0, "")
    finish("E", len(statements))


main()
