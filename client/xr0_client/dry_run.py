"""The real-time executor against a policy server without a robot: synthetic observations (random images of the
robot type's views, a zero state), actions discarded. It measures the timeline a robot would get from this server
and network (latency percentiles, idle ticks, late switches), to choose `execute_steps` and `commit_steps`
before a robot is attached.

    xr0-serve --model out/libero --port 8000 &
    python -m xr0_client.dry_run --port 8000 --ticks 300 --execute_steps 5 --commit_steps 4

Prints the executor's metrics as one JSON line on stdout. Ctrl-C stops it with a summary line (chunks executed,
ticks) and exit status 130.
"""

import json
import logging
import os
import sys

import numpy as np

from xr0_common.cli import ArgumentParser, exit_on_interrupt

from .client import XR0Client
from .realtime import PREFIX_MODES, RealtimeExecutor, RemoteChunkSource, ThreadedRunner

logger = logging.getLogger("xr0.dry_run")


def synthetic_observation(
    views: list, image_size: int, state_dim: int, instruction: str, robot_type: str, rng
) -> dict:
    return {
        "images": {view: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for view in views},
        "instruction": instruction,
        "state": np.zeros(state_dim, np.float32),
        "robot_type": robot_type,
    }


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("XR0_SERVER_TOKEN"))
    parser.add_argument("--robot_type", default=None, help="default: the server's only robot type")
    parser.add_argument("--ticks", type=int, default=300, help="control ticks after the first chunk")
    parser.add_argument("--control_hz", type=float, default=30.0)
    parser.add_argument("--execute_steps", type=int, default=None, help="default: half the chunk")
    parser.add_argument("--commit_steps", type=int, default=None, help="default: execute_steps - 1 (>= 1)")
    parser.add_argument(
        "--prefix_mode",
        choices=PREFIX_MODES,
        default=None,
        help="how the next chunk uses the current one (default: the server's default_prefix_mode)",
    )
    parser.add_argument("--inference_timeout", type=float, default=None, help="seconds (default: wait)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--state_dim", type=int, default=8)
    parser.add_argument("--instruction", default="Pick up the object.")
    args = parser.parse_args(argv)

    try:
        client = XR0Client(args.host, args.port, token=args.token)
    except OSError as error:
        sys.exit(f"xr0_client.dry_run: cannot reach the policy server at {args.host}:{args.port}: {error}")
    with client:
        served = client.metadata.get("robot_types", {})
        robot_type = args.robot_type or (next(iter(served)) if len(served) == 1 else None)
        if robot_type not in served:
            parser.error(f"--robot_type must be one of {sorted(served)} (what {client.uri} serves)")
        chunk_length = served[robot_type]["chunk_length"]
        execute_steps = args.execute_steps or max(1, chunk_length // 2)
        commit_steps = args.commit_steps or max(1, execute_steps - 1)
        prefix_mode = args.prefix_mode or client.metadata.get("default_prefix_mode", "trained")
        rng = np.random.default_rng(0)
        views = served[robot_type]["views"]
        runner = ThreadedRunner(RemoteChunkSource(client))
        executor = RealtimeExecutor(
            runner,
            lambda: synthetic_observation(
                views, args.image_size, args.state_dim, args.instruction, robot_type, rng
            ),
            lambda action: None,
            control_hz=args.control_hz,
            execute_steps=execute_steps,
            commit_steps=commit_steps,
            prefix_mode=prefix_mode,
            inference_timeout=args.inference_timeout,
        )
        logger.info(
            "running %d ticks at %g Hz against %s: %s, chunks of %d, execute_steps %d, commit_steps %d, "
            "prefix_mode %s",
            args.ticks,
            args.control_hz,
            client.uri,
            robot_type,
            chunk_length,
            execute_steps,
            commit_steps,
            prefix_mode,
        )
        try:
            with exit_on_interrupt(executor.metrics.line):
                executor.run(args.ticks)
        finally:
            runner.close()
    logger.info(executor.metrics.line())
    print(json.dumps(executor.metrics.summary()))


if __name__ == "__main__":
    main()
