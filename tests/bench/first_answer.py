"""Times N sessions: from starting CMD to its answer to `initialize`.

    first_answer.py N CMD [ARGS...]    (PAUSE=SECONDS waits between sessions)

Prints the median, minimum and maximum in milliseconds. CMD is a stdio MCP
server, or `mcpwarden run ... -- SERVER` (through the daemon when one answers
on MCPWARDEN_SOCKET). Used for BENCHMARKS.md's daemon figures.
"""

import os
import statistics
import subprocess
import sys
import time

INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n'
)


def main():
    n, cmd = int(sys.argv[1]), sys.argv[2:]
    pause = float(os.environ.get("PAUSE", "0"))
    times = []
    for _ in range(n):
        start = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdin.write(INITIALIZE)
        p.stdin.flush()
        line = p.stdout.readline()
        times.append((time.monotonic() - start) * 1000)
        if b'"result"' not in line:
            sys.exit(f"no answer to initialize: {line!r}")
        p.stdin.close()
        p.wait()
        time.sleep(pause)
    print(
        "first answer ms: median %.0f, min %.0f, max %.0f (n=%d)"
        % (statistics.median(times), min(times), max(times), len(times))
    )


main()
