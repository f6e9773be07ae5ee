"""The ``vigil`` console script: one argparse subcommand per function.

``vigil node --config FILE`` runs a validator. Wallet-facing subcommands (keygen, wallet, verify,
tx) live in node/tools/wallet.py, which exposes ``register(subparsers)``; each subcommand sets
``func`` (taking the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import signal
import sys
from collections.abc import Callable, Sequence

EXIT_CONFIG = 2
EXIT_FAILURE = 1
# The node's cyclic garbage collector runs a young collection every GC_THRESHOLDS[0] container
# allocations (Python's default: 700) and an older one every GC_THRESHOLDS[1], [2] of those.
# A validator allocates a few dozen containers per tx and keeps large caches (blocks, accounts,
# the detector's history) whose every object a full collection walks: at the defaults a node
# spent 1.6-1.75 s in the collector over a 30 s max-rate bench, 9-10 full collections of ~110
# ms each (docs/performance.md). Cycles are still collected, just in bigger, rarer batches.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """Collector settings for a long-running node: what start-up built (modules, genesis,
    config) is frozen out of every later collection, and collections come less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``node.event_loop`` names (docs/config.md): uvloop, a libuv loop that
    does the same work as the standard library's with less CPU per socket write, thread
    hand-off and timer, or the standard library's own."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def cmd_node(args: argparse.Namespace) -> int:
    """Run one validator until SIGTERM/SIGINT."""
    from node.chain.genesis import GenesisError
    from node.host.config import ConfigError, load_config, read_passphrase
    from node.host.logs import LogConfigError, add_secret, setup_logging
    from node.host.runtime import Node, NodeError
    from storage.db import StorageError

    try:
        cfg = load_config(args.config)
        setup_logging(cfg.log_format, cfg.log_level)
        if cfg.admin_token:
            # Never run with a token the logs could leak: a failure here stops the node.
            add_secret(cfg.admin_token)
        passphrase = read_passphrase(cfg)
        if passphrase:
            add_secret(passphrase)  # redacted from every log line, like the admin token
        node = Node(cfg)
    except (ConfigError, GenesisError, NodeError, LogConfigError) as exc:
        print(f"vigil node: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await node.run(stop)

    tune_gc()
    try:
        with asyncio.Runner(loop_factory=loop_factory(cfg.event_loop)) as runner:
            runner.run(main())
    except (StorageError, NodeError, ConfigError) as exc:
        print(f"vigil node: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # typically a port already in use
        print(f"vigil node: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description="Vigil permissioned PBFT node")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("node", help="run a validator node")
    p.add_argument("--config", required=True, help="TOML config file (docs/config.md)")
    p.set_defaults(func=cmd_node)
    # Other subcommands register themselves if their module is present.
    for module in (
        "node.tools.wallet",
        "node.tools.hostsetup",
        "node.tools.genesis_cmd",
        "node.tools.dbtool",
        "node.tools.admin",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
