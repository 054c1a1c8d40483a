"""Escape attempts, run inside mcpwarden's sandbox by tests/escape/main.rs.

    attempts.py CONTEXT_JSON GROUP

Each attempt is paired with an allowed twin: a closely related action the
sandbox must permit. A sandbox that refuses everything fails its twins; one
that refuses nothing fails its attempts. Prints one JSON object:
{name: {"attempt": [ok, detail], "twin": [ok, detail]}}.
"""

import ctypes
import errno
import json
import os
import signal
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# x86-64 syscall numbers.
NR = {
    "ptrace": 101, "mount": 165, "umount2": 166, "chroot": 161, "unshare": 272, "setns": 308,
    "bpf": 321, "perf_event_open": 298, "kexec_load": 246, "kexec_file_load": 320,
    "keyctl": 250, "add_key": 248, "io_uring_setup": 425, "finit_module": 313,
    "userfaultfd": 323, "process_vm_readv": 310, "reboot": 169, "sethostname": 170,
    "setuid": 105, "getuid": 102, "getpid": 39, "uname": 63, "getrandom": 318,
    "epoll_create1": 291, "clock_gettime": 228, "personality": 135, "pivot_root": 155,
}


class Outcome:
    """An explicit result, for actions whose success is not 'no exception'."""

    def __init__(self, ok, detail):
        self.ok, self.detail = ok, detail


def sys_call(name, *args):
    """Raw syscall."""
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r == -1:
        e = ctypes.get_errno()
        return Outcome(False, f"{name}: {errno.errorcode.get(e, e)}")
    return Outcome(True, f"{name} returned {r}")


def attempt(fn, *args):
    try:
        out = fn(*args)
        if isinstance(out, Outcome):
            return out.ok, out.detail
        return True, repr(out)[:120]
    except OSError as e:
        return False, f"{type(e).__name__}: {errno.errorcode.get(e.errno, e.errno)} {e.strerror}"
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        return False, f"{type(e).__name__}: {e}"


def read(path):
    with open(path, "rb") as f:
        return f.read(64)


def write(path, data=b"x"):
    with open(path, "wb") as f:
        f.write(data)
    return f"wrote {path}"


def run(argv):
    pid = os.fork()
    if pid == 0:
        # The report is the only thing on our stdout.
        os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(126)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise OSError(errno.EPERM, f"exit {code}")
    return f"ran {argv[0]}"


def run_output(argv):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(126)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    return out.strip()


def tcp_connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return f"connected to {port}"


def tcp_bind(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return f"bound {port}"


def abstract_connect(name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect("\0" + name)
        return f"connected to @{name}"


def abstract_inside():
    name = f"mcpwarden-escape-inside-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind("\0" + name)
        srv.listen(1)
        return abstract_connect(name)


def ptrace_sibling():
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    try:
        return sys_call("ptrace", 16, child, 0, 0)  # PTRACE_ATTACH
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def signal_sibling():
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return "signalled own child"


def ioctl_errno(request, arg):
    import fcntl  # noqa: PLC0415

    try:
        fcntl.ioctl(0, request, arg)
        return Outcome(True, "ioctl succeeded")
    except OSError as e:
        # Without a terminal ENOTTY is expected; only EPERM is the filter.
        if e.errno == errno.EPERM:
            return Outcome(False, "EPERM (seccomp)")
        return Outcome(True, f"reached the driver: {errno.errorcode.get(e.errno)}")


def fork_many(n):
    pids = []
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                signal.pause()
                os._exit(0)
            pids.append(pid)
        return f"forked {n}"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def allocate(mib):
    """Touches `mib` MiB in a child, which the OOM killer may take."""
    pid = os.fork()
    if pid == 0:
        block = bytearray(mib << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return Outcome(code == 0, f"allocating {mib} MiB: exit {code}")


def euid_of(path):
    out = run_output([path, "-u"])
    return Outcome(out == "0", f"euid {out}")


def host_pid_visible(pid):
    return os.path.exists(f"/proc/{pid}")


def groups(ctx):
    f, o = ctx["fixture"], ctx["outside"]
    return {
        "filesystem": {
            "read /etc/shadow": (lambda: read("/etc/shadow"), lambda: read("/etc/passwd")),
            "read ~/.ssh key outside the grants": (lambda: read(f"{o}/.ssh/id_ed25519"), lambda: read(f"{f}/granted.txt")),
            "read a world-readable file outside the grants": (lambda: read(f"{o}/secret.txt"), lambda: read(f"{f}/granted.txt")),
            "learn that a file outside the grants exists": (lambda: os.stat(f"{o}/.ssh/id_ed25519"), lambda: os.stat(f"{f}/granted.txt")),
            "list a directory outside the grants": (lambda: os.listdir(o), lambda: os.listdir(f)),
            "write into a read-only grant": (lambda: write(f"{f}/granted.txt"), lambda: write(f"{f}/out/new.txt")),
            "write into a system directory": (lambda: write("/usr/bin/mcpwarden-escape"), lambda: write("/tmp/inside.txt")),
            "follow a symlink out": (
                lambda: (os.symlink(f"{o}/secret.txt", f"{f}/out/link-out"), read(f"{f}/out/link-out")),
                lambda: (os.symlink(f"{f}/granted.txt", f"{f}/out/link-in"), read(f"{f}/out/link-in")),
            ),
            "hard-link a file from outside": (
                lambda: os.link(f"{o}/secret.txt", f"{f}/out/hard-out"),
                lambda: (write(f"{f}/out/orig.txt"), os.link(f"{f}/out/orig.txt", f"{f}/out/hard-in")),
            ),
            "exec a binary from a writable dir": (
                lambda: (write(f"{f}/out/true", read_all("/bin/true")), os.chmod(f"{f}/out/true", 0o755), run([f"{f}/out/true"])),
                lambda: run(["/bin/true"]),
            ),
            "read host files through /proc/1/root": (lambda: read("/proc/1/root/etc/passwd"), lambda: read("/proc/self/status")),
            "leave a file in the host's /tmp": (
                lambda: host_tmp_marker(ctx),
                lambda: write("/tmp/inside-marker"),
            ),
            "write a kernel setting in /proc/sys": (lambda: write("/proc/sys/kernel/hostname", b"pwned"), lambda: read("/proc/sys/kernel/hostname")),
        },
        "syscalls": {
            "ptrace a sibling": (ptrace_sibling, signal_sibling),
            "mount a tmpfs": (lambda: sys_call("mount", b"none", b"/tmp", b"tmpfs", 0, 0), lambda: read("/proc/self/mounts")),
            "unmount /proc": (lambda: sys_call("umount2", b"/proc", 0), lambda: read("/proc/self/mountinfo")),
            "pivot_root": (lambda: sys_call("pivot_root", b"/tmp", b"/tmp"), lambda: os.chdir("/tmp")),
            "chroot": (lambda: sys_call("chroot", b"/tmp"), lambda: os.chdir("/")),
            "unshare a user namespace": (lambda: sys_call("unshare", 0x10000000), lambda: run(["/bin/true"])),
            "setns into the host network": (
                lambda: sys_call("setns", os.open("/proc/self/ns/net", os.O_RDONLY), 0),
                lambda: os.open("/proc/self/ns/net", os.O_RDONLY),
            ),
            "bpf()": (lambda: sys_call("bpf", 5, 0, 0), lambda: sys_call("getpid")),
            "perf_event_open": (lambda: sys_call("perf_event_open", 0, 0, -1, -1, 0), lambda: sys_call("getrandom", ctypes.create_string_buffer(8), 8, 0)),
            "kexec_load": (lambda: sys_call("kexec_load", 0, 0, 0, 0), lambda: sys_call("uname", ctypes.create_string_buffer(390))),
            "kexec_file_load": (lambda: sys_call("kexec_file_load", -1, -1, 0, 0, 0), lambda: sys_call("uname", ctypes.create_string_buffer(390))),
            "keyctl": (lambda: sys_call("keyctl", 0, -3, 0), lambda: sys_call("getrandom", ctypes.create_string_buffer(8), 8, 0)),
            "add_key": (lambda: sys_call("add_key", b"user", b"x", b"y", 1, -4), lambda: sys_call("getpid")),
            "io_uring_setup": (lambda: sys_call("io_uring_setup", 8, ctypes.create_string_buffer(120)), lambda: sys_call("epoll_create1", 0)),
            "load a kernel module": (lambda: sys_call("finit_module", 0, b"", 0), lambda: sys_call("getpid")),
            "userfaultfd": (lambda: sys_call("userfaultfd", 0), lambda: sys_call("epoll_create1", 0)),
            "process_vm_readv on a sibling": (lambda: sys_call("process_vm_readv", 1, 0, 0, 0, 0, 0), lambda: sys_call("getpid")),
            "reboot": (lambda: sys_call("reboot", 0, 0, 0, 0), lambda: sys_call("getpid")),  # bad magic: harmless anywhere
            "set the host name": (lambda: sys_call("sethostname", b"pwned", 5), lambda: socket.gethostname()),
            "setuid(0)": (lambda: sys_call("setuid", 0), lambda: sys_call("getuid")),
            "personality": (lambda: sys_call("personality", 0x0040000), lambda: sys_call("getpid")),
            "inject terminal input (TIOCSTI)": (lambda: ioctl_errno(0x5412, b"x"), lambda: ioctl_errno(0x5401, bytes(60))),
            "escalate through a setuid-root binary": (lambda: euid_of(f"{f}/bin/setuid-id"), lambda: run([f"{f}/bin/setuid-id"])),
        },
        "network": {
            "raw socket": (lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close(), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()),
            "packet socket": (lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close(), lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()),
            "connect to a port that is not granted": (lambda: tcp_connect(ctx["denied_port"]), lambda: tcp_connect(ctx["granted_port"])),
            "bind a port that is not granted": (lambda: tcp_bind(ctx["denied_bind"]), lambda: tcp_bind(ctx["granted_bind"])),
            "abstract unix socket to a host service": (lambda: abstract_connect(ctx["abstract"]), abstract_inside),
        },
        "processes": {
            "signal a process outside the sandbox": (lambda: os.kill(ctx["host_pid"], signal.SIGTERM), signal_sibling),
            "see host processes in /proc": (
                lambda: Outcome(host_pid_visible(ctx["host_pid"]), f"host pid {ctx['host_pid']} in /proc"),
                lambda: Outcome(host_pid_visible(os.getpid()), "own pid in /proc"),
            ),
        },
        "no-network": {
            "reach the host network without a grant": (lambda: tcp_connect(ctx["granted_port"]), lambda: socket.socket().close()),
        },
        "pids": {
            "fork bomb": (lambda: fork_many(200), lambda: fork_many(5)),
        },
        "memory": {
            "exhaust memory": (lambda: allocate(512), lambda: allocate(16)),
        },
    }


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def host_tmp_marker(ctx):
    write(f"/tmp/{ctx['marker']}")
    # Writing works (the sandbox has a /tmp); the escape would be the host
    # seeing the file, which the test checks from outside afterwards.
    return Outcome(False, "written to the private /tmp; the host side checks it never appears there")


def main():
    ctx = json.loads(sys.argv[1])
    group = groups(ctx)[sys.argv[2]]
    out = {}
    for name, (bad, good) in group.items():
        out[name] = {"attempt": attempt(bad), "twin": attempt(good)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
