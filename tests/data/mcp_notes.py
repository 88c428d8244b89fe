"""An MCP server for the agent-loop tests, written with the official `mcp`
Python package and served over stdio. It keeps order notes and writes every
call it receives, one JSON line each, to the log file named by its first
argument, so a test can tell which calls reached it. With `--changed` its
`add_note` tool takes an extra argument: a server that changed a tool after
the bundle pinned it.

With `--http PORT TOKEN` it serves streamable HTTP on 127.0.0.1:PORT at
`/mcp` instead, and refuses (401) any request without `Authorization:
Bearer TOKEN`."""

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


def bearer_only(app, token):
    """Wraps an ASGI app: HTTP requests need the bearer token."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    if "--http" in sys.argv:
        import uvicorn

        at = sys.argv.index("--http")
        port, token = int(sys.argv[at + 1]), sys.argv[at + 2]
        app = server.streamable_http_app()
        uvicorn.run(bearer_only(app, token), host="127.0.0.1", port=port, log_level="warning")
    else:
        server.run()
