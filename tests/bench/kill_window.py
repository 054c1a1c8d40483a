#!/usr/bin/env python3
"""Whether a killed mcpwarden's network rules outlive it until its sandbox is dead.

Each trial starts `mcpwarden run` with a policy whose `[network] allow`
list leaves out 127.0.0.1:PORT (which landlock's port grant lets through,
so only the kernel's cgroup program refuses it) and a server that is no
MCP server, only a loop: a TCP connect (or a UDP datagram) to
127.0.0.1:PORT, again and again. A listener here counts what gets
through. Once the server is looping, mcpwarden gets SIGKILL; the trial
waits for the server to die (its pidfd) and counts what the listener took
after the kill. It also notes whether the dead process's pins were still
in /sys/fs/bpf/mcpwarden. The next trial's start removes what the dead one
left (session cgroups first, then pins); a last short session does that
for the last trial.

    sudo python3 tests/bench/kill_window.py [TRIALS] [MCPWARDEN] [tcp|udp]
"""
import glob
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SERVER = r"""
import os, socket, sys
kind, port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dst = ("127.0.0.1", port)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
said = False
while True:
    if kind == "tcp":
        s = socket.socket()
        r = s.connect_ex(dst)
        s.close()
    else:
        try:
            udp.sendto(b"x", dst)
            r = 0
        except OSError as e:
            r = e.errno
    if r != 0 and not said:
        with open(ready, "w") as f:
            f.write(str(r))
        said = True
"""

POLICY = """mode = "enforce"
[sandbox]
profile = "python"
read = ["{dir}"]
write = ["{dir}/w"]
[sandbox.network]
connect = [{port}]
[network]
allow = ["127.0.0.1:9"]
[inspect]
enabled = false
"""


def now():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def listen(kind):
    """A listener on a free loopback port; returns (port, arrival times)."""
    seen = []
    if kind == "tcp":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)

        def run():
            while True:
                conn, _ = sock.accept()
                seen.append(now())
                conn.close()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))

        def run():
            while True:
                sock.recv(16)
                seen.append(now())
    threading.Thread(target=run, daemon=True).start()
    return sock.getsockname()[1], seen


def session_pids(mcpw_pid):
    # Pure cgroup v2, or the v2 hierarchy of a hybrid host.
    procs = [p for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
             for p in glob.glob(f"{root}/mcpwarden/session-{mcpw_pid}-*/cgroup.procs")]
    for path in procs:
        try:
            pids = [int(p) for p in open(path).read().split()]
        except OSError:
            continue
        if pids:
            return pids
    return []


def trial(mcpw, policy, server, kind, port, work, seen):
    ready = os.path.join(work, "w", "ready")
    if os.path.exists(ready):
        os.unlink(ready)
    run = subprocess.Popen(
        [mcpw, "run", "--policy", policy, "--", "/usr/bin/python3", server, kind, str(port), ready],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not os.path.exists(ready):
        if run.poll() is not None or time.time() > deadline:
            run.kill()
            run.wait()
            return {"error": f"the server never looped (mcpwarden exit {run.returncode})"}
        time.sleep(0.005)
    fds = []
    for pid in session_pids(run.pid):
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:
            pass
    before = len(seen)
    time.sleep(random.uniform(0.05, 0.3))
    killed = now()
    os.kill(run.pid, signal.SIGKILL)
    poll = select.poll()
    for fd in fds:
        poll.register(fd, select.POLLIN)
    gone, end = 0, time.time() + 10
    while gone < len(fds) and time.time() < end:
        gone += len(poll.poll(100))
    all_gone = now()
    run.wait()
    for fd in fds:
        os.close(fd)
    pinned = bool(glob.glob(f"/sys/fs/bpf/mcpwarden/{run.pid}-*"))
    time.sleep(0.25)  # the listener's backlog
    through = [t for t in seen[before:] if t > killed]
    return {
        "before_kill": sum(1 for t in seen[before:] if t <= killed),
        "after_kill": len(through),
        "sandbox_gone_ms": (all_gone - killed) / 1e6 if gone == len(fds) and fds else None,
        "pinned_after_kill": pinned,
    }


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    mcpw = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else "target/release/mcpwarden")
    kind = sys.argv[3] if len(sys.argv) > 3 else "tcp"
    port, seen = listen(kind)
    work = tempfile.mkdtemp(prefix="mcpw-kill-window-")
    os.chmod(work, 0o755)
    os.mkdir(os.path.join(work, "w"))
    os.chmod(os.path.join(work, "w"), 0o777)
    server = os.path.join(work, "server.py")
    with open(server, "w") as f:
        f.write(SERVER)
    policy = os.path.join(work, "policy.toml")
    with open(policy, "w") as f:
        f.write(POLICY.format(dir=work, port=port))
    results = []
    for i in range(trials):
        result = trial(mcpw, policy, server, kind, port, work, seen)
        results.append(result)
        print(json.dumps({"trial": i, **result}), flush=True)
    # One last session: its start removes what the last trial left.
    subprocess.run([mcpw, "run", "--policy", policy, "--", "/bin/true"],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    done = [r for r in results if "error" not in r]
    gone = sorted(r["sandbox_gone_ms"] for r in done if r["sandbox_gone_ms"] is not None)
    print(f"{kind}: {len(done)} trials ({len(results) - len(done)} failed to start), "
          f"refused before the kill in every trial: {all(r['before_kill'] == 0 for r in done)}")
    print(f"  trials with a denied {'connect' if kind == 'tcp' else 'datagram'} through after "
          f"the kill: {sum(1 for r in done if r['after_kill'])}, "
          f"in all: {sum(r['after_kill'] for r in done)}")
    if gone:
        print(f"  SIGKILL to sandbox gone: median {statistics.median(gone):.1f} ms, "
              f"p90 {gone[int(len(gone) * 0.9) - 1]:.1f} ms, max {gone[-1]:.1f} ms")
    print(f"  pins still there after the kill: {sum(1 for r in done if r['pinned_after_kill'])}"
          f" of {len(done)}; left at the end: {glob.glob('/sys/fs/bpf/mcpwarden/*')}")


if __name__ == "__main__":
    main()
