"""The yardstick: a bare loop of Chat Completions requests with no checkpoint, limits or output.

    python bench/baseline.py URL --rows N [--client default|aiohttp|lean] [--concurrency 64]

`default` is `AsyncOpenAI` as most scripts use it (httpx transport, pydantic response models);
`aiohttp` is the same with `DefaultAioHttpClient`; `lean` is aiohttp and json with no SDK at all.
The bodies are the ones batchrun renders for the bench job, so both send identical requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from harness import API_KEY, MODEL, PROMPT, SYSTEM, review_rows

Send = Callable[[dict[str, Any]], Awaitable[str | None]]


def bodies(n: int) -> Iterator[dict[str, Any]]:
    """The request body of each bench row."""
    for row in review_rows(n):
        yield {
            "model": MODEL,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": PROMPT.format(**row)}],
            "temperature": 0,
            "max_tokens": 256,
        }


async def pool(send: Send, n: int, concurrency: int) -> int:
    """`concurrency` workers share one iterator of bodies; returns how many answers came back."""
    pending = bodies(n)
    answered = 0

    async def worker() -> None:
        nonlocal answered
        for body in pending:
            if await send(body) is not None:
                answered += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


async def with_sdk(url: str, n: int, concurrency: int, aiohttp_client: bool) -> int:
    """`client.chat.completions.create(**body)`, as a bare SDK loop does it."""
    import openai

    extra: dict[str, Any] = {"http_client": openai.DefaultAioHttpClient()} if aiohttp_client else {}
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, **extra) as client:

        async def send(body: dict[str, Any]) -> str | None:
            completion = await client.chat.completions.create(**body)
            return completion.choices[0].message.content

        return await pool(send, n, concurrency)


async def lean(url: str, n: int, concurrency: int) -> int:
    """aiohttp and json only: the floor for any Python client."""
    import aiohttp

    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: dict[str, Any]) -> str | None:
            async with session.post(f"{url}/v1/chat/completions", data=json.dumps(body), headers=headers) as response:
                data = json.loads(await response.read())
            return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        return await pool(send, n, concurrency)


def main() -> None:
    """Run one baseline and print how many requests were answered."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--client", choices=["default", "aiohttp", "lean"], default="default")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if args.client == "lean":
        answered = asyncio.run(lean(args.url, args.rows, args.concurrency))
    else:
        answered = asyncio.run(with_sdk(args.url, args.rows, args.concurrency, args.client == "aiohttp"))
    print(json.dumps({"answered": answered}))


if __name__ == "__main__":
    main()
