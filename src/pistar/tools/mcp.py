"""MCP client: the tools of any Model Context Protocol server, over stdio or streamable HTTP, as pistar Tools.

    with MCPServer("python", ["tests/mcp_server.py"]) as server:    # or MCPServer(url="http://host:8000/mcp")
        agent = LLMAgent(model, server.tools)

The MCP SDK is async, but `Tool.__call__` is synchronous and runs in a worker thread while the agent's own event loop
runs in the main thread. So each MCPServer owns a private event loop in a daemon thread that keeps one session open
(connect once, call many times); tool calls are handed to it with `asyncio.run_coroutine_threadsafe` and waited for
with a timeout. Every failure — unreachable, crashed, timed out, or the tool's own isError — becomes
ToolError("tool_failed", <one line>), so a broken server costs the agent one step, never a hang or a crash.

Arguments are checked against the server's own input schema with `jsonschema` before sending, so a missing key, a wrong
type or an unknown key (unless the schema explicitly allows extra properties) is ToolError("bad_args"), the model's
fault, as with a local tool. What the server still rejects comes back as an isError result: "tool_failed". A schema that
is itself invalid is not checked locally (`validate=False` turns the check off).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import shlex
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

import jsonschema
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from pistar.tools.base import Tool, ToolError

__all__ = ["MCPServer", "mcp_tools"]

_LIST_PAGES = 100  # a server whose tool listing never ends must not hang the connect


class MCPServer:
    """One open session with an MCP server; `tools` are its tools as pistar Tools. Close it (or use `with`)."""

    def __init__(
        self,
        command: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        prefix: str = "",
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        validate: bool = True,
        stderr: TextIO | None = None,
    ):
        """Connect and list the tools; raises ToolError("tool_failed") if the server cannot be reached.

        command/args/env/cwd start a stdio server (env is added to a minimal safe environment, as the SDK does);
        url connects to a streamable-HTTP server instead. `prefix` is put before every tool name to avoid clashes.
        `timeout` bounds each call. A stdio server's stderr goes to a private file whose last line is quoted in
        errors, unless `stderr` is given.
        """
        if (command is None) == (url is None):
            raise ValueError("give either a command (stdio) or a url (streamable HTTP)")
        self.name = url or shlex.join([command or "", *args])
        self.prefix, self.timeout, self.validate = prefix, timeout, validate
        self.tools: list[Tool] = []
        self._errlog: TextIO | None = None
        if url is not None:
            target: Any = url
        else:
            if stderr is None:
                # lives as long as the server (closed in close()), so not a with-block
                self._errlog = stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
            params = StdioServerParameters(command=command or "", args=list(args), env=dict(env or {}), cwd=cwd)
            target = stdio_client(params, errlog=stderr)
        self._client: Client | None = None
        self._failure = ""  # why the session ended, once it has
        self._closed = False
        self._lock = threading.Lock()
        self._calls: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp:{self.name[:40]}", daemon=True)
        self._thread.start()
        self._ready: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()  # set when the session has ended
        self._stop = asyncio.Event()
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(target), self._loop)
        atexit.register(self.close)  # no server process may outlive the interpreter
        try:
            listing = self._ready.result(connect_timeout)
        except concurrent.futures.TimeoutError:
            self.close()
            raise ToolError("tool_failed", f"MCP server {self.name}: no answer within {connect_timeout:g}s") from None
        except Exception as e:
            why = self._failure or self._why(e)  # before close(), which discards the server's stderr
            self.close()
            raise ToolError("tool_failed", f"cannot connect to MCP server {self.name}: {why}") from None
        self.tools = [self._tool(t) for t in listing]

    async def _serve(self, target: Any) -> None:
        """The session's whole life in one task, as the SDK's task groups require: connect, list, wait, disconnect."""
        try:
            async with Client(target) as client:
                listing, cursor = [], None
                for _ in range(_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    listing += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self._client = client
                self._ready.set_result(listing)
                await self._stop.wait()
        except BaseException as e:  # the transport died (or never came up): record why, fail what is in flight
            self._failure = self._failure or self._why(e)
            if not self._ready.done():
                self._ready.set_exception(e if isinstance(e, Exception) else RuntimeError(self._failure))
            if not isinstance(e, Exception):
                raise
        finally:
            self._client = None
            self._failure = self._failure or "session ended"
            for task in list(self._calls):
                task.cancel()
            self._done.set_result(None)

    def _tool(self, spec: Any) -> Tool:
        """An MCP tool listing → a pistar Tool with the server's schema and a synchronous fn that calls the server."""
        schema: dict[str, Any] = dict(spec.input_schema or {})
        schema.setdefault("type", "object")
        remote = spec.name
        name = self.prefix + remote
        validator = None
        if self.validate:
            strict = schema
            if "properties" in schema and not {"additionalProperties", "patternProperties"} & schema.keys():
                strict = {**schema, "additionalProperties": False}  # an unknown key is a model's slip, not data
            try:
                cls = jsonschema.validators.validator_for(strict)
                cls.check_schema(strict)
                validator = cls(strict)
            except jsonschema.SchemaError:
                validator = None  # the server will judge the arguments itself

        def call(**args: Any) -> str:
            if validator is not None:
                problems = [
                    f"{'.'.join(map(str, e.absolute_path)) or 'args'}: {e.message}"
                    for e in sorted(validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))
                ]
                if problems:
                    raise ToolError("bad_args", _clip(f"bad arguments for {name}: {'; '.join(problems)}"))
            result = self._run(lambda client: client.call_tool(remote, args, read_timeout_seconds=self.timeout), name)
            text = _content_text(result)
            if result.is_error:
                raise ToolError("tool_failed", f"{name} failed: {text or 'the server reported an error'}")
            return text

        description = spec.description or getattr(spec, "title", None) or ""
        return Tool(name, description.strip(), schema, call)

    def _run(self, make: Callable[[Client], Awaitable[Any]], name: str) -> Any:
        """Run `make(client)` on the session's loop from any thread and wait for it, within the timeout."""
        if self._closed:
            raise ToolError("tool_failed", f"{name} failed: MCP server {self.name} is closed")
        if self._client is None:
            raise ToolError("tool_failed", f"{name} failed: MCP server {self.name} is gone: {self._failure}")

        async def task() -> Any:
            me = asyncio.current_task()
            assert me is not None
            self._calls.add(me)
            try:
                if self._client is None:
                    raise ConnectionError(self._failure)
                return await make(self._client)
            finally:
                self._calls.discard(me)

        try:
            fut = asyncio.run_coroutine_threadsafe(task(), self._loop)
        except RuntimeError:  # the loop closed under us
            raise ToolError("tool_failed", f"{name} failed: MCP server {self.name} is closed") from None
        try:
            return fut.result(self.timeout + 5)  # the SDK's own read timeout fires first; this is the backstop
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ToolError("tool_failed", f"{name} failed: no answer within {self.timeout:g}s") from None
        except concurrent.futures.CancelledError:
            raise ToolError("tool_failed", f"{name} failed: MCP server {self.name} is gone: {self._failure}") from None
        except Exception as e:
            raise ToolError("tool_failed", f"{name} failed: {self._why(e)}") from None

    def _why(self, e: BaseException) -> str:
        """One line on what went wrong, with the stdio server's last words when it has died."""
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        code = e.code if isinstance(e, MCPError) else None
        if code == REQUEST_TIMEOUT:
            return f"no answer within {self.timeout:g}s"
        if code == CONNECTION_CLOSED:
            msg = "the server closed the connection"
        else:
            msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        last = self._stderr_tail()
        return _clip(f"{msg} (server stderr: {last})" if last else msg)

    def _stderr_tail(self) -> str:
        """The last non-empty line the stdio server wrote to stderr, read without moving the shared file offset."""
        if self._errlog is None:
            return ""
        try:
            fd = self._errlog.fileno()
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 2000, max(0, size - 2000)).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    @property
    def alive(self) -> bool:
        """Connected and not closed (a stdio server that died shows up at the next call, as a ToolError)."""
        return self._client is not None and not self._closed

    def close(self) -> None:
        """End the session and stop the server subprocess (the SDK closes its stdin, then terminates, then kills)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        if self._loop.is_running():
            if self._ready.done():  # connected: leave the session's context in order
                self._loop.call_soon_threadsafe(self._stop.set)
                concurrent.futures.wait([self._done], 15)  # the SDK's shutdown escalation is bounded at ~6 s
            if not self._done.done():  # still connecting, or stuck: cancel (the SDK shields the process cleanup)
                self._serving.cancel()
                concurrent.futures.wait([self._done], 10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
        if self._errlog is not None:
            self._errlog.close()

    def __enter__(self) -> MCPServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._client else f"gone ({self._failure})"
        return f"MCPServer({self.name!r}, {len(self.tools)} tools, {state})"


def mcp_tools(spec: str, **kwargs: Any) -> tuple[MCPServer, list[Tool]]:
    """`http(s)://…` or a command line such as "python tests/mcp_server.py" → (server, its tools), for a CLI flag.

    A command starting with `python` or `python3` runs with this interpreter, so the server sees the same packages.
    """
    if spec.startswith(("http://", "https://")):
        server = MCPServer(url=spec, **kwargs)
    else:
        argv = shlex.split(spec)
        if not argv:
            raise ValueError("empty MCP server command")
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        server = MCPServer(argv[0], argv[1:], **kwargs)
    return server, server.tools


def _content_text(result: Any) -> str:
    """A CallToolResult's content as text: text parts joined, other parts summarised, else the structured result."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {block.mime_type}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {res.uri}]")
        else:
            parts.append(f"[{kind or type(block).__name__}]")
    if not parts and getattr(result, "structured_content", None) is not None:
        return json.dumps(result.structured_content)
    return "\n".join(parts)


def _clip(s: str, n: int = 500) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n] + "…"
