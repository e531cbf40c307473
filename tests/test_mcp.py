"""The MCP client against a real MCP server (tests/mcp_server.py), over stdio and streamable HTTP, and in the loop."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ScriptedModel
from mcp.types import CallToolResult, EmbeddedResource, ImageContent, ResourceLink, TextContent, TextResourceContents

from pistar.agent import Budget, LLMAgent, run_episode
from pistar.envs.babyai import BabyAIEnv
from pistar.tools.base import ToolError
from pistar.tools.mcp import MCPServer, _content_text, mcp_tools

SERVER = str(Path(__file__).with_name("mcp_server.py"))


def processes_with(tag: str) -> list[int]:
    """Pids of live processes whose command line contains `tag` (a uuid only our server was started with)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[MCPServer]:
    with MCPServer(sys.executable, [SERVER]) as s:
        yield s


def test_stdio_lists_both_tools_with_the_servers_schemas(server: MCPServer) -> None:
    tools = {t.name: t for t in server.tools}
    assert sorted(tools) == ["add", "reverse"]
    add, rev = tools["add"], tools["reverse"]
    assert add.description == "Add two integers." and rev.description == "Reverse a string."
    assert add.parameters["type"] == "object" and add.parameters["required"] == ["a", "b"]
    assert {k: v["type"] for k, v in add.parameters["properties"].items()} == {"a": "integer", "b": "integer"}
    assert rev.parameters["properties"]["text"]["type"] == "string" and rev.parameters["required"] == ["text"]


def test_stdio_calls_reach_the_server_and_bad_args_stay_local(server: MCPServer) -> None:
    tools = {t.name: t for t in server.tools}
    assert tools["add"]({"a": 2, "b": 40}) == "42"
    assert tools["reverse"]({"text": "pistar"}) == "ratsip"
    for args, needle in [({"a": 1}, "'b' is a required property"), ({"a": "x", "b": 1}, "a: 'x' is not of type")]:
        with pytest.raises(ToolError) as e:
            tools["add"](args)
        assert e.value.kind == "bad_args" and needle in str(e.value)
    with pytest.raises(ToolError) as e:
        tools["reverse"]({"text": "a", "txt": "b"})
    assert e.value.kind == "bad_args" and "'txt' was unexpected" in str(e.value)


async def test_agent_calls_both_mcp_tools_in_babyai(server: MCPServer) -> None:
    model = ScriptedModel(
        [
            json.dumps({"thought": "sum", "tool": "add", "args": {"a": 2, "b": 3}}),
            json.dumps({"thought": "flip", "tool": "reverse", "args": {"text": "abc"}}),
            json.dumps({"thought": "move", "action": "go forward"}),
        ]
    )
    agent = LLMAgent(model, server.tools)
    traj = await run_episode(BabyAIEnv(render=False), agent, 0, Budget(max_steps=3))
    assert [s.result for s in traj.steps[:2]] == ["5", "cba"]
    assert all(s.valid for s in traj.steps) and traj.steps[2].action.kind == "act"
    assert "Result of add:\n5" in model.seen[1][-1]["content"]
    assert "tool add: Add two integers." in model.seen[0][0]["content"]  # the server's description reaches the prompt


def test_tool_errors_and_timeouts_are_tool_failed_and_the_session_survives() -> None:
    server, tools = mcp_tools(f"python {SERVER} --faulty", prefix="t_", timeout=1.0)
    with server:
        by_name = {t.name: t for t in tools}
        assert sorted(by_name) == ["t_add", "t_die", "t_fail", "t_reverse", "t_sleep"]
        with pytest.raises(ToolError) as e:
            by_name["t_fail"]({"message": "disk on fire"})
        assert e.value.kind == "tool_failed" and "disk on fire" in str(e.value)
        t0 = time.perf_counter()
        with pytest.raises(ToolError) as e:
            by_name["t_sleep"]({"seconds": 30})
        assert e.value.kind == "tool_failed" and "no answer within 1s" in str(e.value)
        assert time.perf_counter() - t0 < 5
        assert by_name["t_add"]({"a": 1, "b": 1}) == "2"  # prefixed name, unprefixed call: the session still works


def test_server_dying_mid_session_is_a_tool_error_and_close_leaves_no_process() -> None:
    tag = uuid.uuid4().hex
    server = MCPServer(sys.executable, [SERVER, "--faulty", "--tag", tag], timeout=10)
    tools = {t.name: t for t in server.tools}
    assert len(processes_with(tag)) == 1
    t0 = time.perf_counter()
    for name, args in [("die", {}), ("add", {"a": 1, "b": 2})]:
        with pytest.raises(ToolError) as e:
            tools[name](args)
        assert e.value.kind == "tool_failed" and "closed the connection" in str(e.value)
        assert "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 5  # noticed at once, not after the 10 s timeout
    server.close()
    assert processes_with(tag) == []
    with pytest.raises(ToolError, match="is closed"):
        tools["add"]({"a": 1, "b": 2})

    healthy = MCPServer(sys.executable, [SERVER, "--tag", tag])
    assert len(processes_with(tag)) == 1
    healthy.close()
    assert processes_with(tag) == []


def test_interpreter_exit_stops_an_unclosed_stdio_server() -> None:
    """A hook registered before the server runs after ours (atexit is LIFO): the server must already be gone then,
    not merely die later of a closed stdin once the parent has exited."""
    tag = uuid.uuid4().hex
    script = f"""
import atexit, os, sys
from pathlib import Path
def count():
    me = str(os.getpid())
    n = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and p.name != me and {tag!r}.encode() in _cmdline(p))
    print("left at exit:", n, flush=True)
def _cmdline(p):
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""
atexit.register(count)
from pistar.tools.mcp import MCPServer
s = MCPServer(sys.executable, [{SERVER!r}, "--tag", {tag!r}])
print(s.tools[0]({{"a": 1, "b": 2}}), flush=True)
count()
"""  # and exit without close()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["3", "left at exit: 1", "left at exit: 0"]
    assert processes_with(tag) == []


def test_streamable_http_lists_and_calls_and_a_dead_server_is_a_tool_error() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the HTTP server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the HTTP server did not come up"
                time.sleep(0.1)
        server, tools = mcp_tools(f"http://127.0.0.1:{port}/mcp", timeout=5)
        with server:
            by_name = {t.name: t for t in tools}
            assert sorted(by_name) == ["add", "reverse"]
            assert by_name["add"].parameters["required"] == ["a", "b"]
            assert by_name["add"]({"a": -4, "b": 10}) == "6" and by_name["reverse"]({"text": "mcp"}) == "pcm"
            proc.kill()
            proc.wait(5)
            t0 = time.perf_counter()
            with pytest.raises(ToolError) as e:
                by_name["add"]({"a": 1, "b": 2})
            assert e.value.kind == "tool_failed" and time.perf_counter() - t0 < 8
    finally:
        proc.kill()
        proc.wait(5)


def test_unreachable_servers_fail_fast_with_one_line() -> None:
    for spec in (f"http://127.0.0.1:{free_port()}/mcp", "/nonexistent/mcp-server --flag"):
        t0 = time.perf_counter()
        with pytest.raises(ToolError) as e:
            mcp_tools(spec, connect_timeout=10)
        assert e.value.kind == "tool_failed" and "cannot connect to MCP server" in str(e.value)
        assert "\n" not in str(e.value) and time.perf_counter() - t0 < 10


def test_non_text_content_is_summarised() -> None:
    result = CallToolResult(
        content=[
            TextContent(type="text", text="caption"),
            ImageContent(type="image", data="AAAA", mime_type="image/png"),
            ResourceLink(type="resource_link", uri="file:///x.txt", name="x"),
            EmbeddedResource(type="resource", resource=TextResourceContents(uri="file:///y", text="inline")),
        ]
    )
    assert _content_text(result) == "caption\n[image image/png]\n[resource file:///x.txt]\ninline"
    assert _content_text(CallToolResult(content=[], structured_content={"result": 5})) == '{"result": 5}'
