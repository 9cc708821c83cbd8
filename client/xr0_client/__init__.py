"""The light side of XR0 deployment: what runs next to a robot or a simulator, without torch or transformers.

- `XR0Client` talks to the policy server (`xr0-serve`) over openpi's websocket protocol (`protocol`).
- `RealtimeExecutor` runs action chunks on the report's asynchronous timeline (`realtime`).
- `LiberoClient`, `CalvinClient`, `SimplerEnvClient` build benchmark requests as the official clients do (`benchmarks`).
"""

from xr0_common.protocol import ProtocolError, pack, unpack

from .benchmarks import CalvinClient, LiberoClient, SimplerEnvClient, official_request_seed
from .client import ConnectionRejected, ServerError, XR0Client
from .realtime import (
    FakeClock,
    LocalChunkSource,
    MonotonicClock,
    RealtimeExecutor,
    RemoteChunkSource,
    SimulatedRunner,
    ThreadedRunner,
)

__all__ = [
    "CalvinClient",
    "ConnectionRejected",
    "FakeClock",
    "LiberoClient",
    "LocalChunkSource",
    "MonotonicClock",
    "ProtocolError",
    "RealtimeExecutor",
    "RemoteChunkSource",
    "ServerError",
    "SimplerEnvClient",
    "SimulatedRunner",
    "ThreadedRunner",
    "XR0Client",
    "official_request_seed",
    "pack",
    "unpack",
]
