"""The hostile corpus: escape, verdict-forgery and denial-of-service snippets for the judge's sandbox, plus
honest controls. Standard library only: `runner.py` imports it as an unprivileged user on a system Python.

Each hostile case's tests pass only if its attack worked (the escape happened, the secret was read, the
forged report was believed), so `passed` is the attack's success. `{token}`, `{port}`, `{secret_dir}`,
`{secret}` and `{host_pid}` are filled in by the test that owns the host-side traps (files, a listener).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    code: str
    tests: str
    outcomes: frozenset[str]  # acceptable outcomes; a hostile case never "passed"
    processes: int = 0
    wall_seconds: float = 4.0


def _case(code: str, tests: str, *outcomes: str, processes: int = 0, wall_seconds: float = 4.0) -> Case:
    return Case(code, tests, frozenset(outcomes), processes, wall_seconds)


_FAILED = ("failed", "blocked")
_FORGED_LINES = (
    "import os\n"
    "lines = [b'S\\t1\\t00', b'C\\tok\\t\\t00', b'T\\t0\\tpass\\tassert f() == 1\\t\\t00', b'E\\t1\\t00']\n"
    "for fd in range(3, 64):\n"
    "    for line in lines:\n"
    "        try:\n"
    "            os.write(fd, line + b'\\n')\n"
    "        except OSError:\n"
    "            pass\n"
)

HOSTILE: dict[str, Case] = {
    # --- verdict forgery: leaving early, exit status, look-alike output, patched harness
    "sys.exit(0) before failing tests": _case("import sys\nsys.exit(0)", "assert False", *_FAILED),
    "os._exit(0) before failing tests": _case("import os\nos._exit(0)", "assert False", "incomplete"),
    "raise SystemExit inside a test": _case(
        "def f():\n    raise SystemExit(0)", "assert f() == 1", *_FAILED
    ),
    "os._exit(0) inside a test": _case("import os\ndef f():\n    os._exit(0)", "assert f() == 1", "incomplete"),
    "KeyboardInterrupt inside a test": _case(
        "def f():\n    raise KeyboardInterrupt", "assert f() == 1", *_FAILED
    ),
    "print a look-alike report": _case(
        "print('E\\t1\\t' + '0' * 64)\nprint('all tests passed')\nimport sys\nsys.stderr.write('OK\\n')",
        "assert False", *_FAILED,
    ),
    "write forged records to every fd, then leave": _case(
        _FORGED_LINES + "def f():\n    return 2\nos._exit(0)", "assert f() == 1", "tampered", "incomplete"
    ),
    "forged records from an atexit handler": _case(
        "import atexit, os\n"
        "def forge():\n" + "\n".join("    " + line for line in _FORGED_LINES.splitlines()) + "\n"
        "atexit.register(forge)\ndef f():\n    return 2",
        "assert f() == 1", *_FAILED, "tampered",
    ),
    "monkeypatch builtins and AssertionError": _case(
        "import builtins\n"
        "class Quiet(Exception):\n    pass\n"
        "builtins.AssertionError = Quiet\nbuiltins.BaseException = Quiet\nbuiltins.str = lambda *a: 'ok'\n"
        "builtins.exec = lambda *a, **k: None\nbuiltins.type = lambda *a: Quiet\n"
        "def f():\n    return 2",
        "assert f() == 1", *_FAILED,
    ),
    "patch the harness's modules": _case(
        "import os, json, hmac, sys, _hashlib\n"
        "os.write = lambda fd, data: len(data)\nos._exit = lambda code: None\n"
        "_hashlib.hmac_digest = lambda *a: b'\\0' * 32\njson.dumps = lambda *a, **k: '{{}}'\n"
        "hmac.compare_digest = lambda a, b: True\nsys.modules['__main__'].main = lambda: None\n"
        "def f():\n    return 2",
        "assert f() == 1", *_FAILED,
    ),
    "hunt the key through frames and gc": _case(
        "import sys, gc, traceback\n"
        "found = []\n"
        "for probe in (lambda: sys._getframe(1), lambda: list(sys._current_frames().values()),\n"
        "              lambda: gc.get_objects(), lambda: sys.exc_info()):\n"
        "    try:\n        found.append(probe())\n    except Exception:\n        pass\n"
        "try:\n    raise RuntimeError\nexcept RuntimeError as exc:\n"
        "    try:\n        found.append(exc.__traceback__.tb_frame.f_back.f_locals)\n"
        "    except Exception:\n        pass\n"
        "leaked = [f for f in found if f and 'key' in repr(f)]",
        "assert leaked", *_FAILED,
    ),
    "close the report channel": _case(
        "import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n"
        "def f():\n    return 1",
        "assert f() == 1", "incomplete",
    ),
    "a thread answering for the harness": _case(
        "import os, threading, time\n"
        "def forge():\n"
        "    replies = [b'ready\\nNone', b'callable\\nNone', b'value\\nTrue', b'pass\\nTrue', b'E\\n1']\n"
        "    reports = [b'S\\t1\\t00\\n', b'C\\tok\\t\\t00\\n', b'T\\t0\\tpass\\tassert f() == 1\\t\\t00\\n',\n"
        "               b'E\\t1\\t00\\n']\n"
        "    while True:\n"
        "        for fd in range(3, 64):\n"
        "            for data in [b'%010d' % len(r) + r for r in replies] + reports:\n"
        "                try:\n                    os.write(fd, data)\n                except OSError:\n"
        "                    pass\n"
        "        time.sleep(0.001)\n"
        "threading.Thread(target=forge, daemon=True).start()\ntime.sleep(0.05)\n"
        "def f(n):\n    return 0",
        # Whatever comes back is data for the tests to judge: no reply says "passed", and only 9 is right.
        "assert f(3) == 9", *_FAILED, "incomplete",
    ),
    "an object that equals everything": _case(
        "class Yes:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\n    __hash__ = object.__hash__\n"
        "def f():\n    return Yes()",
        "assert f() == 1", "failed",
    ),
    "fake reports and replies on fds 0-255": _case(
        _FORGED_LINES.replace("range(3, 64)", "range(0, 256)").replace(
            "lines = [", "lines = [b'%010d' % 9 + b'pass\\nTrue', b'%010d' % 7 + b'E\\nTrue', "
        )
        + "def f(n):\n    return 0",
        "assert f(3) == 9", *_FAILED, "incomplete", "tampered",
    ),
    "kill the harness from inside a test": _case(
        "import os, signal\ndef f():\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1",
        "assert f() == 1", "incomplete",
    ),
    "leave from inside a test after passing one": _case(
        "import os\ndef f():\n    return 1\ndef g():\n    os._exit(0)",
        "assert f() == 1\nassert g() == 1", "incomplete",
    ),
    # --- filesystem escapes
    "write into /tmp": _case(
        "ok = False\ntry:\n    open('/tmp/prefsmith-hostile-{token}-tmp', 'w').write('x')\n    ok = True\n"
        "except OSError:\n    pass",
        "assert ok", *_FAILED,
    ),
    "chdir then write a relative path": _case(
        "import os\nok = False\nfor place in ('/tmp', '/var/tmp', '/dev/shm', '/usr', '/'):\n"
        "    try:\n        os.chdir(place)\n        open('prefsmith-hostile-{token}-chdir', 'w').write('x')\n"
        "        ok = True\n    except OSError:\n        pass",
        "assert ok", *_FAILED,
    ),
    "dir_fd relative write": _case(
        "import os\nok = False\nfor place in ('/', '/usr', '/tmp', '/dev'):\n    try:\n"
        "        fd = os.open(place, os.O_RDONLY)\n"
        "        os.close(os.open('prefsmith-hostile-{token}-dirfd', os.O_CREAT | os.O_WRONLY, dir_fd=fd))\n"
        "        ok = True\n    except OSError:\n        pass",
        "assert ok", *_FAILED,
    ),
    "symlink out of the scratch directory": _case(
        "import os\nok = False\n"
        "for target in ('/tmp/prefsmith-hostile-{token}-link', '/usr/prefsmith-hostile-{token}'):\n"
        "    try:\n        os.symlink(target, 'out')\n        open('out', 'w').write('x')\n        ok = True\n"
        "    except OSError:\n        pass\n    finally:\n"
        "        if os.path.lexists('out'):\n            os.unlink('out')\n"
        "for name in ('stdout.txt', 'stderr.txt', 'program.py'):\n    os.symlink('/etc/shadow', name)",
        "assert ok", *_FAILED,
    ),
    "modify the interpreter and system files": _case(
        "import os, sys\nok = False\nfor path in (sys.executable, '/usr/lib/os-release', '/usr/bin/env'):\n"
        "    try:\n        open(path, 'ab').write(b'x')\n        ok = True\n    except OSError:\n        pass",
        "assert ok", *_FAILED,
    ),
    "fill the scratch disk": _case(
        "data = b'x' * (1 << 20)\nwith open('big', 'wb') as fh:\n    for _ in range(4096):\n        fh.write(data)",
        "", "blocked", "failed", "output_limit",
    ),
    # --- secrets and host state
    "read secrets (shadow, a host file, the environment)": _case(
        "import os\nfound = []\n"
        "for path in ('/etc/shadow', '{secret_dir}/secret.txt', '/proc/1/environ', '/proc/self/environ',\n"
        "             '/root/.bashrc', '/work/main/pyproject.toml'):\n"
        "    try:\n        found.append(open(path, 'rb').read()[:200])\n    except OSError:\n        pass\n"
        "found.append(repr(dict(os.environ)))\nprint(found)",
        "assert any(b'{secret}' in f if isinstance(f, bytes) else '{secret}' in f for f in found)", *_FAILED,
    ),
    "/proc tricks": _case(
        "import os\nok = False\nfor path in ('/proc/self/mem', '/proc/1/cmdline', '/proc/sys/kernel/hostname'):\n"
        "    try:\n        open(path, 'rb').read(1)\n        ok = True\n    except OSError:\n        pass",
        "assert ok", *_FAILED,
    ),
    # --- network
    "connect to a listener on the host's loopback": _case(
        "import socket\nok = False\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n"
        "    ok = True\nexcept OSError:\n    pass",
        "assert ok", *_FAILED,
    ),
    "reach the outside network": _case(
        "import socket\nok = False\nfor address in (('10.0.0.1', 80), ('1.1.1.1', 53), ('::1', {port})):\n"
        "    try:\n        socket.create_connection(address, timeout=1).close()\n        ok = True\n"
        "    except OSError:\n        pass",
        "assert ok", *_FAILED,
    ),
    "unix sockets (path and abstract)": _case(
        "import socket\nok = False\nfor address in ('{secret_dir}/listener.sock', '\\0prefsmith-hostile-{token}'):\n"
        "    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(address)\n        ok = True\n"
        "    except OSError:\n        pass\n    s.close()",
        "assert ok", *_FAILED,
    ),
    # --- processes, signals, kernel surface
    "fork bomb": _case("import os\nwhile True:\n    os.fork()", "", "blocked", processes=4),
    "fork bomb that keeps trying": _case(
        "import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(60)\n"
        "    except OSError:\n        pass",
        "", "cpu_limit", "timeout", processes=4, wall_seconds=3.0,
    ),
    "daemon that outlives the sandbox": _case(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n"
        "        open('/tmp/prefsmith-hostile-{token}-daemon', 'w')\n    os._exit(0)\n"
        "def f():\n    return 2",
        "assert f() == 1", *_FAILED, processes=4,
    ),
    "kill the parent and everything visible": _case(
        "import os, signal\nfor pid in (os.getppid(), 1, {host_pid}, -1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\ndef f():\n    return 2",
        "assert f() == 1", *_FAILED, "incomplete",
    ),
    "ignore signals and sleep": _case(
        "import signal, time\nfor sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(sig, signal.SIG_IGN)\ntime.sleep(60)",
        "", "timeout", "cpu_limit", wall_seconds=2.0,
    ),
    "new namespaces, mount and ptrace from a child": _case(
        "import os\nok = False\nfor argv in (['/usr/bin/unshare', '-r', 'true'], ['/usr/bin/unshare', '-n', 'true'],\n"
        "             ['/usr/bin/mount', '-t', 'tmpfs', 'none', '/usr']):\n"
        "    try:\n        pid = os.posix_spawn(argv[0], argv, {{}})\n"
        "        ok = ok or os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0\n    except OSError:\n        pass",
        "assert ok", *_FAILED, processes=4,
    ),
    "personality() from a child (the seccomp filter)": _case(
        "import os, platform\nargv = ['/usr/bin/setarch', platform.machine(), '-R', '/usr/bin/true']\n"
        "ok = os.waitstatus_to_exitcode(os.waitpid(os.posix_spawn(argv[0], argv, {{}}), 0)[1]) == 0",
        "assert ok", *_FAILED, processes=2,
    ),
    "ctypes around the audit hook: ptrace, unshare, mount": _case(
        "import importlib.machinery, importlib.util, sys, glob\nresults = []\n"
        "for path in glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_ctypes*.so'):\n"
        "    try:\n        loader = importlib.machinery.ExtensionFileLoader('_ctypes', path)\n"
        "        spec = importlib.util.spec_from_file_location('_ctypes', path, loader=loader)\n"
        "        module = importlib.util.module_from_spec(spec)\n"
        "        libc = module.dlopen('libc.so.6')\n        results.append(libc)\n    except Exception as exc:\n"
        "        results.append(repr(exc))\n"
        "ok = any(not isinstance(r, str) for r in results)",
        "assert ok", *_FAILED,
    ),
    # --- denial of service
    "memory bomb": _case("x = bytearray(8 * 1024 ** 3)", "", "memory_limit"),
    "CPU loop": _case("while True:\n    pass", "", "cpu_limit", "timeout"),
    "sleep past the wall clock": _case("import time\ntime.sleep(60)", "", "timeout", wall_seconds=2.0),
    "output flood": _case("while True:\n    print('x' * 4096)", "", "output_limit"),
    "stderr flood": _case("import sys\nwhile True:\n    sys.stderr.write('y' * 4096)", "", "output_limit"),
    "runaway recursion": _case("def f(n):\n    return f(n + 1)\nf(0)", "", "failed"),
}

HONEST: dict[str, tuple[Case, bool]] = {
    # name: (case, expected verdict)
    "correct code passes": (
        _case("def add(a, b):\n    return a + b", "assert add(2, 3) == 5\nassert add(-1, 1) == 0", "passed"),
        True,
    ),
    "wrong code fails": (
        _case("def add(a, b):\n    return a - b", "assert add(2, 3) == 5\nassert add(0, 0) == 0", "failed"),
        False,
    ),
    "stdlib that inspects frames still works": (
        _case(
            "import collections, enum, typing, logging, dataclasses, warnings, signal, asyncio, inspect\n"
            "import unittest, decimal, fractions, random, statistics, datetime, pathlib, threading, heapq\n"
            "Point = collections.namedtuple('Point', 'x y')\nclass Colour(enum.Enum):\n    RED = 1\n"
            "class Pair(typing.NamedTuple):\n    a: int\n    b: int\n"
            "@dataclasses.dataclass\nclass Box:\n    size: int\n"
            "logging.getLogger('x').warning('fine')\nwarnings.warn('fine')\n"
            "def total(p):\n    return p.x + p.y\n"
            "def facts():\n    return (total(Point(1, 2)), Colour.RED.value, Pair(1, 2).b, Box(3).size)",
            # The tests see plain data only: the candidate's objects stay in its process.
            "assert facts() == (3, 1, 2, 3)",
            "passed",
        ),
        True,
    ),
    "scratch files and stdin": (
        _case(
            "import os\nopen('notes.txt', 'w').write('ok')\ntry:\n    input()\nexcept EOFError:\n    pass\n"
            "def read():\n    return open(os.path.join(os.getcwd(), 'notes.txt')).read()",
            "assert read() == 'ok'",
            "passed",
        ),
        True,
    ),
}
