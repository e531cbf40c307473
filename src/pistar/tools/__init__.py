"""Tools an agent can call: typed functions with JSON schemas, a calculator and a sandboxed Python."""

from pistar.tools.base import Tool, ToolError, tool

__all__ = ["Tool", "ToolError", "tool"]
