"""The judge's sandbox's seccomp layer: a BPF program, built here with no library, that bwrap loads with
--seccomp to refuse the syscalls candidate code never needs.

Standard library only, like `tools.jail`, which passes the program to bwrap through a pipe.
"""

from __future__ import annotations

import errno
import platform
import struct

# Syscalls candidate code never needs and that are the usual ways out of a namespace sandbox or into the
# kernel's rarely-audited corners. Numbers per architecture; tests/test_tools.py checks them against
# libseccomp where it is installed.
_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "mount", "umount2",
    "pivot_root", "chroot", "setns", "unshare", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "init_module", "finit_module",
    "delete_module", "swapon", "swapoff", "reboot", "acct", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "quotactl", "open_by_handle_at", "name_to_handle_at", "personality", "syslog", "fanotify_init",
    "vhangup", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "kcmp",
)
SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {
    # machine: (AUDIT_ARCH_*, {name: number})
    "x86_64": (0xC000003E, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246,
        "kexec_file_load": 320, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "setns": 308,
        "unshare": 272, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "swapon": 167, "swapoff": 168,
        "reboot": 169, "acct": 163, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
        "adjtimex": 159, "quotactl": 179, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "personality": 135, "syslog": 103, "fanotify_init": 300, "vhangup": 153, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "kcmp": 312,
    }),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kexec_load": 104,
        "kexec_file_load": 294, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "setns": 268,
        "unshare": 97, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "swapon": 224, "swapoff": 225,
        "reboot": 142, "acct": 89, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266,
        "adjtimex": 171, "quotactl": 60, "open_by_handle_at": 265, "name_to_handle_at": 264,
        "personality": 92, "syslog": 116, "fanotify_init": 262, "vhangup": 58, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "kcmp": 272,
    }),
}
_X32_SYSCALL_BIT = 0x40000000
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_LD_ABS_W, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The compiled BPF program (struct sock_filter[]) bwrap loads with --seccomp, or None on an
    architecture without a table. Another architecture's syscalls are killed outright; denied ones get EPERM."""
    entry = SYSCALLS.get(machine or platform.machine())
    if entry is None:
        return None
    arch, numbers = entry
    program = [(_LD_ABS_W, 0, 0, 4), (_JEQ, 1, 0, arch), (_RET, 0, 0, _RET_KILL_PROCESS), (_LD_ABS_W, 0, 0, 0)]
    denied = sorted({numbers[name] for name in _DENIED})
    # Jump targets count from the next instruction: the EPERM return sits after the list and ALLOW.
    if arch == SYSCALLS["x86_64"][0]:  # the x32 ABI aliases every syscall above this bit
        program.append((_JGE, len(denied) + 1, 0, _X32_SYSCALL_BIT))
    for position, number in enumerate(denied):
        program.append((_JEQ, len(denied) - position, 0, number))
    program += [(_RET, 0, 0, _RET_ALLOW), (_RET, 0, 0, _RET_ERRNO | errno.EPERM)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
