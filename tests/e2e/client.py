"""Drives an MCP stdio server with the official Python SDK client.

    client.py SCENARIO_JSON -- CMD [ARGS...]
    client.py SCENARIO_JSON --url URL     (a Streamable HTTP server; with
                                          MCP_BEARER set, it sends
                                          Authorization: Bearer $MCP_BEARER;
                                          an https URL is checked against the
                                          CA in MCP_TLS_CA, and MCP_TLS_CERT/
                                          MCP_TLS_KEY give a client certificate)

The scenario is a list of steps: {"call": TOOL, "args": {...}},
{"list_tools": true}, {"procs": true} (record the host pids now in the
server's cgroup, found from the last `whoami`; sandboxed servers see their
own pid namespace, so only the host view is comparable with kernel events),
{"check_gone": true} (wait until every recorded pid is dead), or
{"wait_file": PATH} (wait until the test creates PATH). The client
always initializes first. It prints one JSON document: the initialize result, every step's
outcome (result or JSON-RPC error), and every request it sent (id, method,
params), so a test can match kernel events to the exact request ids.
"""

import json
import os
import ssl
import subprocess
import sys
import time

import anyio
import httpx2
import mcp_types as types
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


class RecordingStream:
    """Wraps the client's write stream to record each request it sends."""

    def __init__(self, inner, sent):
        self._inner = inner
        self._sent = sent

    async def send(self, item):
        msg = item.message
        dumped = msg.model_dump(by_alias=True, exclude_none=True) if hasattr(msg, "model_dump") else msg
        if isinstance(dumped, dict) and "method" in dumped:
            self._sent.append({k: dumped.get(k) for k in ("id", "method", "params")})
        await self._inner.send(item)

    async def __aenter__(self):
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._inner.__aexit__(*exc)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            # Gone before the open, or reaped between the open and the read.
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def cgroup_root():
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.startswith("cgroup2 "):
                return left.split()[4]
    raise RuntimeError("no cgroup2 mount")


def session_procs(whoami):
    path = next(l[3:] for l in whoami["cgroup"].splitlines() if l.startswith("0::"))
    with open(f"{cgroup_root()}{path}/cgroup.procs", encoding="ascii") as f:
        return [int(p) for p in f.read().split()]


async def sampling(context, params):
    """A stand-in model: answers a server's sampling request deterministically."""
    text = params.messages[-1].content.text
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"model says: {text}"), model="stand-in"
    )


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def transport(target):
    if target[0] == "--url":
        token = os.environ.get("MCP_BEARER")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        client = create_mcp_http_client(headers=headers)
        ca = os.environ.get("MCP_TLS_CA")
        if ca:
            context = ssl.create_default_context(cafile=ca)
            if os.environ.get("MCP_TLS_CERT"):
                context.load_cert_chain(os.environ["MCP_TLS_CERT"], os.environ["MCP_TLS_KEY"])
            # The SDK's factory sets timeouts and headers; TLS is the one
            # thing it does not take, so the client is rebuilt with it.
            client = httpx2.AsyncClient(headers=client.headers, timeout=client.timeout, verify=context)
        return streamable_http_client(target[1], http_client=client)
    command = target[1:]
    return stdio_client(StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ)))


async def main(scenario, target):
    out = {"steps": [], "sent": []}
    watched = []  # host pids whose death check_gone verifies
    whoami = None
    async with transport(target) as (read, write):
        async with ClientSession(
            read, RecordingStream(write, out["sent"]), read_timeout_seconds=20, sampling_callback=sampling
        ) as session:
            out["initialize"] = dump(await session.initialize())
            for step in scenario:
                if step.get("list_tools"):
                    out["steps"].append({"list_tools": dump(await session.list_tools())})
                elif step.get("host_ops"):
                    # The same kind of calls from a process outside the
                    # session: the kernel must not report them.
                    d = step["host_ops"]
                    os.mkdir(f"{d}/host-sub")
                    os.rename(f"{d}/host-sub", f"{d}/host-moved")
                    os.rmdir(f"{d}/host-moved")
                    out["steps"].append({"host_ops": d})
                elif step.get("host_run"):
                    # A program run outside the session, during it.
                    done = subprocess.run(step["host_run"], capture_output=True, text=True, check=False)
                    out["steps"].append({"host_run": done.returncode})
                elif step.get("procs"):
                    procs = session_procs(whoami)
                    watched.extend(p for p in procs if p not in watched)
                    out["steps"].append({"procs": procs})
                elif step.get("wait_file"):
                    # A handshake with the test: it creates the file when
                    # it is ready for the next step (e.g. a policy reload).
                    deadline = time.monotonic() + step.get("timeout", 20)
                    while not os.path.exists(step["wait_file"]) and time.monotonic() < deadline:
                        await anyio.sleep(0.02)
                    out["steps"].append({"waited": os.path.exists(step["wait_file"])})
                elif step.get("check_gone"):
                    deadline = time.monotonic() + 5
                    while pids_alive(watched) and time.monotonic() < deadline:
                        await anyio.sleep(0.05)
                    out["steps"].append({"watched": watched, "alive": pids_alive(watched)})
                else:
                    try:
                        result = await session.call_tool(step["call"], step.get("args", {}))
                        rec = {"call": step["call"], "result": dump(result)}
                        if step["call"] == "whoami":
                            whoami = json.loads(result.content[0].text)
                    except MCPError as e:
                        rec = {"call": step["call"], "error": {"code": e.error.code, "message": e.error.message}}
                    out["steps"].append(rec)
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), sys.argv[2:])
