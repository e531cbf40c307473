"""A tiny real MCP server for the tests: `add` and `reverse`, over stdio (default) or streamable HTTP.

python tests/mcp_server.py                 stdio
python tests/mcp_server.py --http 8123     streamable HTTP on http://127.0.0.1:8123/mcp
... --faulty                               also serve `fail`, `die` and `sleep`, to test error paths
"""

from __future__ import annotations

import argparse
import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def build(faulty: bool = False) -> MCPServer:
    server = MCPServer("pistar-test", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def reverse(text: str) -> str:
        """Reverse a string."""
        return text[::-1]

    if faulty:

        @server.tool()
        def fail(message: str) -> str:
            """Always fail with the given message (an anticipated error: the client sees the message)."""
            raise ToolError(message)

        @server.tool()
        def die() -> str:
            """Exit the server process at once, mid-request."""
            os._exit(3)

        @server.tool()
        def sleep(seconds: float) -> str:
            """Block for a while."""
            time.sleep(seconds)
            return "slept"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port")
    parser.add_argument("--faulty", action="store_true", help="add the fail, die and sleep tools")
    parser.add_argument("--tag", default="", help="ignored: a mark on the command line that lets a test find us")
    opts = parser.parse_args()
    server = build(opts.faulty)
    if opts.http:
        server.run("streamable-http", host="127.0.0.1", port=opts.http)
    else:
        server.run()


if __name__ == "__main__":
    main()
