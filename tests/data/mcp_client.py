"""An MCP client for the tests, written with the official `mcp` Python
package: it connects to URL over streamable HTTP with `Authorization:
Bearer TOKEN`, lists the tools, then makes the calls in CALLS (a JSON list
of `[name, arguments]`) one after another. It prints one JSON line for the
list and one per call as soon as the call returns, so a test can see a call
still waiting (for an approval) while earlier ones are done.

usage: mcp_client.py URL TOKEN CALLS"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def emit(line):
    print(json.dumps(line), flush=True)


async def main(url, token, calls):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, streamable_http_client(url, http_client=http) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            emit({"tools": [{"name": t.name, "description": t.description, "schema": t.input_schema} for t in listed.tools]})
            for name, arguments in calls:
                result = await session.call_tool(name, arguments)
                text = "\n".join(block.text for block in result.content if getattr(block, "text", None))
                emit({"call": name, "is_error": result.is_error, "structured": result.structured_content, "text": text})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
