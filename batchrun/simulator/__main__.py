"""`python -m batchrun.simulator`: the simulator standalone, in its own process."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import fields

from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.server import Simulator


def _parser() -> argparse.ArgumentParser:
    """`--config JSON` plus one flag per config field (and --rpm, --tpm, --latency)."""
    parser = argparse.ArgumentParser(prog="python -m batchrun.simulator", description="Vertex-compatible simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", default="{}", help="JSON object of SimulatorConfig fields")
    aliases = {"rpm_quota": ["--rpm"], "tpm_quota": ["--tpm"], "latency_s": ["--latency"]}
    for item in fields(SimulatorConfig):
        flags = [f"--{item.name.replace('_', '-')}", *aliases.get(item.name, [])]
        parser.add_argument(*flags, dest=item.name, default=argparse.SUPPRESS, metavar="VALUE")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run standalone; print one JSON line with the URL once listening; serve until SIGTERM/SIGINT."""
    parser = _parser()
    args = vars(parser.parse_args(argv))
    host, port, settings = args.pop("host"), args.pop("port"), args.pop("config")
    types = {f.name: str(f.type) for f in fields(SimulatorConfig)}
    try:
        flags = {k: v if "str" in types[k] and v != "null" else json.loads(v) for k, v in args.items()}
        config = SimulatorConfig.from_mapping({**json.loads(settings), **flags})
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_serve(config, host, port))


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until a signal asks to stop."""
    simulator = Simulator(config)
    url = await simulator.start(host, port)
    print(json.dumps({"url": url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await simulator.stop()


if __name__ == "__main__":
    main()
