"""Benchmark of the policy server's round-trip overhead and of the real-time executor (numbers, not a test).

    python -m xr0.deploy.benchmark [--model fixtures/tiny-xr0] [--requests 50]

1. Round trip for one observation of two 224x224 views over a websocket on 127.0.0.1: client-measured
   time minus the server's own inference time = protocol + validation + transport overhead.
2. The executor on the wall clock against the server (30 Hz), and in simulation at latencies around the
   committed window, reporting idle ticks, latency percentiles and seam vs inner-chunk action jumps.
"""

import statistics
import time

import numpy as np

from xr0_client import (
    FakeClock,
    LocalChunkSource,
    RealtimeExecutor,
    RemoteChunkSource,
    SimulatedRunner,
    ThreadedRunner,
    XR0Client,
    pack,
    unpack,
)
from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from .policy import load_policy, parse_request
from .server import PolicyServer


def register_one_second_arm(processor, name: str = "arm30") -> None:
    """Registers a robot type with 1 s chunks (T = 30, as the pre-training robot types) on the tiny checkpoint's
    processor: 7 active action dims, for the simulated real-time timeline."""
    std = np.tile(np.r_[np.full(7, 0.1), np.zeros(25)], (30, 1))
    processor.register_robot_type(
        name,
        views=[["base", "Base"], ["wrist_left", "Left-Wrist"]],
        action_mean=np.zeros((30, 32)),
        action_std=std,
    )


def observation(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "images": {
            view: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for view in ("base", "wrist_left")
        },
        "instruction": "Put both the alphabet soup and the tomato sauce in the basket.",
        "state": rng.normal(size=8).astype(np.float32),
        "robot_type": "libero_all",
        "seed": step,
    }


def ms(values) -> str:
    values = sorted(values)
    return f"p50 {np.percentile(values, 50):7.2f} ms  p90 {np.percentile(values, 90):7.2f} ms  max {values[-1]:7.2f} ms"


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(REPO_ROOT / "fixtures" / "tiny-xr0"))
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    import torch  # after parsing, so that --help prints at once

    torch.set_num_threads(max(1, torch.get_num_threads()))
    # load_policy's defaults: CUDA in bfloat16 when available, else the CPU in float32.
    policy = load_policy(args.model, args.device)
    args.device = str(policy.model.device)
    server = PolicyServer(policy, port=0).start_in_thread()
    print(f"model {args.model} on {args.device}; server ws://127.0.0.1:{server.port}")

    frame = pack(observation(0))
    codec = []
    for _ in range(200):
        start = time.perf_counter()
        parse_request(unpack(pack(observation(0))), policy.processor)
        codec.append((time.perf_counter() - start) * 1e3)
    print(f"observation message: {len(frame) / 1e3:.1f} kB; pack + unpack + validate: {ms(codec)}")

    with XR0Client("127.0.0.1", server.port) as client:
        for step in range(3):
            client.infer(observation(step))  # warm-up
        round_trips, infers, overheads = [], [], []
        for step in range(args.requests):
            start = time.perf_counter()
            reply = client.infer(observation(step))
            rtt = (time.perf_counter() - start) * 1e3
            infer = reply["server_timing"]["infer_ms"]
            round_trips.append(rtt)
            infers.append(infer)
            overheads.append(rtt - infer)
        print(f"round trip ({args.requests} requests): {ms(round_trips)}")
        print(f"server inference:           {ms(infers)}")
        print(
            f"overhead (round trip - inference): {ms(overheads)}  (median share {statistics.median(o / r for o, r in zip(overheads, round_trips, strict=True)):.1%})"
        )

        runner = ThreadedRunner(RemoteChunkSource(client))
        executor = RealtimeExecutor(
            runner,
            lambda: observation(1),
            lambda action: None,
            control_hz=30,
            execute_steps=5,
            commit_steps=4,
        )
        metrics = executor.run(150).summary()
        runner.close()
        print("executor, wall clock, remote server, LIBERO chunks of 10, 150 ticks at 30 Hz (T_e=5, Δt_c=4):")
        print(
            "  "
            + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        )
    hostile_frames(server, args.requests)
    server.stop()

    register_one_second_arm(policy.processor)
    source = LocalChunkSource(policy)
    print("executor, simulated clock, chunks of 30, 300 ticks at 30 Hz (T_e=10, Δt_c=5 = 167 ms):")
    for latency_ms in (50, 150, 300, 1200):
        clock = FakeClock()
        executor = RealtimeExecutor(
            SimulatedRunner(source, clock, lambda k, latency_ms=latency_ms: latency_ms / 1e3),
            lambda: dict(observation(2), robot_type="arm30"),
            lambda action: None,
            clock=clock,
            execute_steps=10,
            commit_steps=5,
        )
        summary = executor.run(300).summary()
        print(
            f"  latency {latency_ms:5d} ms: idle_ticks={summary['idle_ticks']:3d} late_switches={summary['late_switches']} "
            f"commit_steps_last={summary['commit_steps_last']} seam_delta_mean={summary['seam_delta_mean']:.3f} "
            f"inner_delta_mean={summary['inner_delta_mean']:.3f}"
        )


def hostile_frames(server, requests: int) -> None:
    """Latency of /healthz and of a good client while another connection sends hostile frames (a 4 MiB dtype
    string numpy would parse with literal_eval, 15 MiB of empty msgpack arrays), against the same without."""
    import threading
    import urllib.request

    import msgpack
    from websockets.sync.client import connect

    url = f"http://127.0.0.1:{server.port}/healthz"
    dtype_bomb = msgpack.packb(
        {
            "state": {
                b"__ndarray__": True,
                b"data": b"",
                b"dtype": "(" + "1," * 2_000_000 + ")u1",
                b"shape": [0],
            }
        },
        use_bin_type=True,
    )
    array_bomb = msgpack.packb([[]] * (15 * 2**20))

    def measure(client) -> tuple:
        health, infer = [], []
        for step in range(requests):
            start = time.perf_counter()
            urllib.request.urlopen(url, timeout=30).read()
            health.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            client.infer(observation(step))
            infer.append((time.perf_counter() - start) * 1e3)
        return health, infer

    with XR0Client("127.0.0.1", server.port) as client:
        baseline = measure(client)
        stop, refusals = threading.Event(), []

        def attack():
            with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
                ws.recv()
                while not stop.is_set():
                    for frame in (dtype_bomb, array_bomb):
                        start = time.perf_counter()
                        ws.send(frame)
                        reply = ws.recv(timeout=60)
                        assert isinstance(reply, str), "a hostile frame was accepted"
                        refusals.append((time.perf_counter() - start) * 1e3)

        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        time.sleep(0.5)
        during = measure(client)
        stop.set()
        attacker.join(timeout=120)
    print(
        f"hostile frames ({len(dtype_bomb) / 2**20:.1f} MiB dtype string, {len(array_bomb) / 2**20:.1f} MiB of empty arrays):"
    )
    print(f"  refused in                       {ms(refusals)}  ({len(refusals)} frames)")
    print(f"  /healthz   without: {ms(baseline[0])}   during: {ms(during[0])}")
    print(f"  good client without: {ms(baseline[1])}   during: {ms(during[1])}")


if __name__ == "__main__":
    main()
