"""Drives `ingero mcp` with the official Python MCP SDK (PyPI `mcp`), a
client no one on this project wrote, over stdio.

Usage: python3 mcp_client.py SPEC_JSON, where SPEC_JSON is
{"command": "...", "args": [...], "calls": [[tool, arguments], ...]}.
Prints one JSON object: the server's name and instructions, the tools it
lists, and for each call either its text and error flag, or the protocol
error it raised. The Rust test (tests/mcp.rs) makes the assertions.
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main() -> None:
    spec = json.loads(sys.argv[1])
    params = StdioServerParameters(command=spec["command"], args=spec["args"])
    out = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["server"] = {"name": init.server_info.name, "instructions": init.instructions}
            listed = await session.list_tools()
            out["tools"] = [
                {
                    "name": t.name,
                    "description": t.description,
                    "schema": t.input_schema,
                    "read_only": bool(t.annotations and t.annotations.read_only_hint),
                }
                for t in listed.tools
            ]
            calls = []
            for name, arguments in spec["calls"]:
                try:
                    r = await session.call_tool(name, arguments)
                    text = "".join(c.text for c in r.content if getattr(c, "type", "") == "text")
                    calls.append({"name": name, "is_error": bool(r.is_error), "text": text})
                except Exception as e:  # a JSON-RPC error, not a tool result
                    calls.append({"name": name, "protocol_error": str(e)})
            out["calls"] = calls
    print(json.dumps(out))


asyncio.run(main())
