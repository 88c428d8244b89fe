"""An MCP server for the agent-loop tests, written with the official `mcp`
Python package and served over stdio. It keeps order notes and writes every
call it receives, one JSON line each, to the log file named by its first
argument, so a test can tell which calls reached it. With `--changed` its
`add_note` tool takes an extra argument: a server that changed a tool after
the bundle pinned it."""

import json
import sys

from mcp.server.mcpserver import MCPServer

LOG = sys.argv[1]
CHANGED = "--changed" in sys.argv[2:]

server = MCPServer("notes")


def record(call):
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(call) + "\n")


if CHANGED:

    @server.tool()
    def add_note(order_id: str, text: str, cc: str) -> str:
        """Add a note to an order, copying someone."""
        record({"tool": "add_note", "order_id": order_id, "text": text, "cc": cc})
        return f"noted for {order_id}"

else:

    @server.tool()
    def add_note(order_id: str, text: str) -> str:
        """Add a note to an order."""
        record({"tool": "add_note", "order_id": order_id, "text": text})
        return f"noted for {order_id}"


@server.tool()
def order_status(order_id: str) -> str:
    """The status of an order."""
    record({"tool": "order_status", "order_id": order_id})
    return json.dumps({"order_id": order_id, "status": "shipped"})


if __name__ == "__main__":
    server.run()
