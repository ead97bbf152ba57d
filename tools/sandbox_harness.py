"""The judge's test harness: runs inside the sandbox, before and around the candidate's code.

It is not imported by prefsmith: `tools.jail` passes this file's text to the sandboxed interpreter with `-c`,
so it must run on any Python 3.8+ with the standard library alone, and imports only built-in modules (its
start-up is most of a sandbox call's cost). It reads its request (marshal: the candidate's code, the test
statements the host split the tests into, the limits and a per-call key) from stdin, then:

1. sets the resource limits (inside the sandbox's own user namespace, so the process count is per sandbox);
2. compiles the code and every top-level test statement before any candidate code runs;
3. installs an audit hook (an extra layer: it closes the usual routes to this function's frame, where the
   key lives);
4. runs the code, then each test statement separately, and reports each outcome as a line signed with
   HMAC-SHA256 under the key on a pipe of its own (never stdout/stderr), ending with an "E" record;
5. leaves with os._exit(0), so atexit handlers and threads the candidate left behind cannot add anything.

Everything the harness calls after the candidate's code has run is bound to a local name before it runs:
patching builtins or modules (os, marshal, _sha256) afterwards does not reach it.
"""

import marshal
import os
import resource
import sys
import types  # noqa: F401 - imported before the audit hook: its module code reads a traceback's frame


def main():  # one straight-line trusted sequence; split up, its locals would leak
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

    try:  # built-in C SHA-256 (3.12 renamed it): nothing in it can be patched from Python, no OpenSSL to load
        from _sha2 import sha256
    except ImportError:
        from _sha256 import sha256
    # HMAC-SHA256 (RFC 2104) by hand, its pads made before any candidate code runs.
    key = key if len(key) <= 64 else sha256(key).digest()
    inner = bytes(byte ^ 0x36 for byte in key.ljust(64, b"\0"))
    outer = bytes(byte ^ 0x5C for byte in key.ljust(64, b"\0"))
    write = os.write
    exit_now = os._exit
    run = exec
    text = str
    kind = type
    base = BaseException

    def report(*fields):
        record = "\t".join(text(field).replace("\t", " ").replace("\n", " ")[:300] for field in fields)
        data = record.encode("utf-8", "replace")
        mac = sha256(outer + sha256(inner + data).digest()).hexdigest()
        write(report_fd, data + b"\t" + mac.encode("ascii") + b"\n")

    def describe(exc):
        try:
            message = text(exc)
        except base:  # a candidate's __str__ may raise anything
            message = "?"
        try:
            name = kind(exc).__name__
        except base:
            name = "BaseException"
        return text(name) + ": " + message

    for name, value in (
        ("RLIMIT_CPU", (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
        ("RLIMIT_AS", (limits["memory_bytes"], limits["memory_bytes"])),
        ("RLIMIT_FSIZE", (limits["file_bytes"], limits["file_bytes"])),
        ("RLIMIT_NOFILE", (64, 64)),
        ("RLIMIT_CORE", (0, 0)),
        # Counted in the sandbox's own user namespace: this sandbox's processes, not every `nobody`'s.
        ("RLIMIT_NPROC", (limits["processes"] + 1, limits["processes"] + 1)),
    ):
        resource.setrlimit(getattr(resource, name), value)

    try:
        code = compile(request["code"], "candidate.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        report("C", "fail", describe(exc))
        report("E", 0)
        exit_now(0)
    statements = []
    try:
        # The host split the tests into top-level statements; the blank lines keep their line numbers.
        for source, line in request["tests"]:
            padded = "\n" * (line - 1) + source
            statements.append((compile(padded, "tests.py", "exec", dont_inherit=True), source.splitlines()[0]))
    except (SyntaxError, ValueError) as exc:
        report("C", "fail", "the tests do not compile: " + describe(exc))
        report("E", 0)
        exit_now(0)
    confine = request["confine"]
    del request
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
    report("S", len(statements))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        run(code, namespace)
    except base as exc:  # SystemExit and KeyboardInterrupt included: leaving early fails
        report("C", "fail", describe(exc))
        report("E", 0)
        exit_now(0)
    report("C", "ok", "")
    for index, (statement, source) in enumerate(statements):
        try:
            run(statement, namespace)
        except base as exc:  # same: any way out of a test but its end is a failure
            report("T", index, "fail", source, describe(exc))
        else:
            report("T", index, "pass", source, "")
    report("E", len(statements))
    exit_now(0)


main()
