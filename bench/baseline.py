"""The yardstick: a bare loop of Chat Completions requests with no checkpoint, limits or output.

    python bench/baseline.py URL --rows N [--client default|aiohttp|lean] [--loop workers|gather] [--concurrency 64]

`default` is `AsyncOpenAI` as most scripts use it (its own httpx2 transport, pydantic response
models, its default retries); `aiohttp` is the same with `DefaultAioHttpClient`; `lean` is aiohttp
and json with no SDK at all. `--loop workers` (the default) is `concurrency` workers sharing one
iterator of bodies; `gather` is the other loop users write, a semaphore of `concurrency` and one
`asyncio.gather` over every row (a task per row: about a quarter more CPU per request here).
The bodies are the ones batchrun renders for the bench job, so both send identical requests.
Prints how many answers came back and the CPU seconds of the loop alone (the whole process's,
imports included, is what bench/run.py reads from rusage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from harness import API_KEY, MODEL, PROMPT, SYSTEM, review_rows

Send = Callable[[dict[str, Any]], Awaitable[str | None]]


def bodies(n: int) -> Iterator[dict[str, Any]]:
    """The request body of each bench row."""
    for row in review_rows(n):
        yield {
            "model": MODEL,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT.format(**row)}],
            "temperature": 0,
            "max_tokens": 256,
        }


async def pool(send: Send, n: int, concurrency: int, loop: str = "workers") -> int:
    """Every body sent, `concurrency` at a time; returns how many answers came back."""
    if loop == "gather":
        gate = asyncio.Semaphore(concurrency)

        async def one(body: dict[str, Any]) -> str | None:
            async with gate:
                return await send(body)

        return sum(answer is not None for answer in await asyncio.gather(*(one(b) for b in bodies(n))))
    pending = bodies(n)
    answered = 0

    async def worker() -> None:
        nonlocal answered
        for body in pending:
            if await send(body) is not None:
                answered += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


async def with_sdk(url: str, n: int, concurrency: int, aiohttp_client: bool, loop: str) -> int:
    """`client.chat.completions.create(**body)`, as a bare SDK loop does it, the client as constructed by default."""
    import openai

    extra: dict[str, Any] = {"http_client": openai.DefaultAioHttpClient()} if aiohttp_client else {}
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, **extra) as client:

        async def send(body: dict[str, Any]) -> str | None:
            completion = await client.chat.completions.create(**body)
            return completion.choices[0].message.content

        return await pool(send, n, concurrency, loop)


async def lean(url: str, n: int, concurrency: int, loop: str) -> int:
    """aiohttp and json only: the floor for any Python client."""
    import aiohttp

    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(body: dict[str, Any]) -> str | None:
            async with session.post(f"{url}/v1/chat/completions", data=json.dumps(body), headers=headers) as response:
                data = json.loads(await response.read())
            return data["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        return await pool(send, n, concurrency, loop)


def main() -> None:
    """Run one baseline and print how many requests were answered."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--client", choices=["default", "aiohttp", "lean"], default="default")
    parser.add_argument("--loop", choices=["workers", "gather"], default="workers")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    import aiohttp  # noqa: F401 - imported before the clock starts: the loop's CPU is the requests' alone
    import openai  # noqa: F401

    started = time.process_time()
    if args.client == "lean":
        answered = asyncio.run(lean(args.url, args.rows, args.concurrency, args.loop))
    else:
        answered = asyncio.run(with_sdk(args.url, args.rows, args.concurrency, args.client == "aiohttp", args.loop))
    print(json.dumps({"answered": answered, "loop_cpu_s": time.process_time() - started}))


if __name__ == "__main__":
    main()
