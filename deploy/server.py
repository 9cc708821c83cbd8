"""XR0 policy server: openpi's websocket protocol (msgpack + numpy), without pickle. Only the transport lives
here; the request model and the policy are `xr0.deploy.policy`.

    xr0-serve --model <checkpoint dir> [--host 127.0.0.1] [--port 8000]      (token: XR0_SERVER_TOKEN or --token)

On connect the server sends its metadata (robot types it can serve, their views and chunk lengths). Each binary
frame is one observation (see `xr0.deploy.policy`) and gets `{"actions": float32 (T, active dims) in robot
units, "robot_type": ..., "server_timing": {...}}`, T = the robot type's chunk length. Every field is validated
before it reaches the model; a bad request gets a TEXT frame `{"error": {"field", "message"}}` (openpi clients
raise it as RuntimeError) and the connection stays usable. One inference runs at a time per model; waiting
requests are served in arrival order. `GET /healthz` answers 200. With a token, clients must send
`Authorization: Api-Key <token>`.
"""

import argparse
import asyncio
import hmac
import logging
import os
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Optional

import torch
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from xr0_client.protocol import ProtocolError, error_text, pack, unpack

from .policy import (
    OBSERVATION_KEYS,
    RequestError,
    XR0Policy,
    load_policy,
    parse_request,
    servable_robot_types,
)

logger = logging.getLogger("xr0.server")


class PolicyServer:
    def __init__(
        self,
        policy: XR0Policy,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: Optional[str] = None,
        max_message_bytes: int = 16 * 2**20,
        name: str = "xr0",
    ):
        self.policy = policy
        self.host, self.port = host, port
        self.token = token
        self.max_message_bytes = max_message_bytes
        self.name = name
        self._lock: Optional[asyncio.Lock] = None
        self._server = None
        self._loop = None

    def metadata(self) -> dict:
        processor = self.policy.processor
        return {
            "server": "xr0",
            "protocol_version": 1,
            "model": self.name,
            "robot_types": {
                name: {
                    "views": [key for key, _ in spec.views],
                    "active_action_dims": processor.active_action_dims(name),
                    "chunk_length": processor.chunk_length(name),
                }
                for name, spec in servable_robot_types(processor).items()
            },
            "observation_keys": sorted(OBSERVATION_KEYS),
            "max_message_bytes": self.max_message_bytes,
        }

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.token}".encode()):
                logger.warning(
                    "refused a connection from %s: bad or missing Api-Key", connection.remote_address
                )
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key\n"
                )
        return None

    async def _handle(self, websocket) -> None:
        peer = websocket.remote_address
        await websocket.send(pack(self.metadata()))
        try:
            async for frame in websocket:
                await websocket.send(await self._reply(frame, peer))
        except ConnectionClosed:
            pass

    async def _reply(self, frame, peer):
        received = time.perf_counter()
        try:
            if isinstance(frame, str):
                raise RequestError(None, "expected a binary msgpack frame, got text")
            request = parse_request(unpack(frame, self.max_message_bytes), self.policy.processor)
        except (ProtocolError, RequestError) as error:
            field = getattr(error, "field", None)
            logger.info("%s: refused request: %s%s", peer, f"{field}: " if field else "", error)
            return error_text(field, str(error))
        async with self._lock:  # one inference at a time; asyncio.Lock wakes waiters in arrival order
            started = time.perf_counter()
            try:
                actions = await asyncio.to_thread(self.policy, request)
            except (ValueError, TypeError) as error:  # a request the processor or model still refuses
                logger.info("%s: refused request: %s", peer, error)
                return error_text(None, str(error))
            except Exception:  # noqa: BLE001 - a server must outlive a failed inference
                logger.exception("%s: inference failed", peer)
                return error_text(None, "internal error during inference (logged on the server)")
            finished = time.perf_counter()
        timing = {"infer_ms": (finished - started) * 1e3, "queue_ms": (started - received) * 1e3}
        logger.info(
            "%s: %s infer %.1f ms, queued %.1f ms",
            peer,
            request.robot_type,
            timing["infer_ms"],
            timing["queue_ms"],
        )
        return pack({"actions": actions, "robot_type": request.robot_type, "server_timing": timing})

    async def serve_forever(self, ready: Optional[threading.Event] = None) -> None:
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        async with serve(
            self._handle,
            self.host,
            self.port,
            max_size=self.max_message_bytes,
            compression=None,
            process_request=self._process_request,
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            logger.info(
                "serving %s on ws://%s:%d%s",
                self.name,
                self.host,
                self.port,
                " (token required)" if self.token else "",
            )
            if ready is not None:
                ready.set()
            await server.serve_forever()

    def start_in_thread(self) -> "PolicyServer":
        """Serve from a daemon thread (tests, benchmarks, in-process robots); returns once listening."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run_until_closed(ready)), daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("the policy server did not start within 30 s")
        return self

    async def _run_until_closed(self, ready):
        try:
            await self.serve_forever(ready)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._thread.join(timeout=10)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (converted or fine-tuned)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token", default=os.environ.get("XR0_SERVER_TOKEN"), help="shared Api-Key clients must send"
    )
    parser.add_argument("--max-message-mb", type=float, default=16.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        logger.warning(
            "binding %s without --token: anyone who can reach this port can drive the policy", args.host
        )
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    policy = load_policy(args.model, args.device, dtype)
    server = PolicyServer(
        policy, args.host, args.port, args.token, int(args.max_message_mb * 2**20), Path(args.model).name
    )
    asyncio.run(server.serve_forever())


if __name__ == "__main__":
    main()
