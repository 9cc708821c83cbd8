"""XR0 policy server: openpi's websocket protocol (msgpack + numpy), without pickle. Only the transport lives
here; the request model and the policy are `xr0.deploy.policy`.

    xr0-serve --model <checkpoint dir> [--host 127.0.0.1] [--port 8000]      (token: XR0_SERVER_TOKEN or --token)

On connect the server sends its metadata (the checkpoint and its revision, the robot types it can serve, their
views and chunk lengths, openpi's observation keys per robot type). Each binary frame is one observation, in our
form or openpi's (see `xr0.deploy.policy`), and gets `{"actions": float32 (T, active dims) in robot
units, "robot_type": ..., "server_timing": {...}}`, T = the robot type's chunk length. Every field is validated
before it reaches the model; a bad request gets a TEXT frame `{"error": {"field", "message"}}` (openpi clients
raise it as RuntimeError) and the connection stays usable. One inference runs at a time per model; waiting
requests are served in arrival order. `GET /healthz` answers 200. With a token, clients must send
`Authorization: Api-Key <token>`. Ctrl-C stops it with a summary line (requests served, refused, failed,
uptime) and exit status 130.
"""

import asyncio
import hmac
import logging
import os
import threading
import time
from http import HTTPStatus
from typing import Optional

from websockets.asyncio.server import serve
from websockets.datastructures import MultipleValuesError
from websockets.exceptions import ConnectionClosed

from xr0_common.cli import ArgumentParser, exit_on_interrupt
from xr0_common.protocol import ProtocolError, error_text, field_name, pack, shown, unpack

from .policy import (
    RequestError,
    XR0Policy,
    add_guidance_arguments,
    default_device,
    guidance_from_arguments,
    load_policy,
)

logger = logging.getLogger("xr0.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Frames above this size are decoded in a worker thread, so the event loop keeps answering other clients.
DECODE_IN_THREAD_BYTES = 256 * 1024


class _RateLimitedLog(logging.Filter):
    """Lets one record of a kind through per `interval` seconds and counts the rest (a connection flood makes
    asyncio's accept loop log "Too many open files" on every retry)."""

    def __init__(self, pattern: str, interval: float = 10.0):
        super().__init__()
        self.pattern, self.interval = pattern, interval
        self.last, self.suppressed = -float("inf"), 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern not in record.getMessage() and not (
            record.exc_info and self.pattern in str(record.exc_info[1])
        ):
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return False
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} more like it suppressed)"
        self.last, self.suppressed = now, 0
        record.exc_info = None  # one line, not a traceback
        return True


class PolicyServer:
    """
    The websocket transport of an `XR0Policy`.

    Args:
        max_message_bytes: frames above are closed with 1009 (only that connection).
        max_connections: websocket connections served at once; beyond, the handshake is answered 503.
        idle_timeout: seconds a client may take to send a complete message (after connecting or after its last
            reply); a slower or silent client is disconnected (1008), so nobody holds a connection forever.
        allowed_origins: when given, browsers' Origin header must be one of these.
        checkpoint: what the metadata reports as the checkpoint (`checkpoint_identity`; default: just `name`).
    """

    def __init__(
        self,
        policy: XR0Policy,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: Optional[str] = None,
        max_message_bytes: int = 16 * 2**20,
        max_connections: int = 64,
        idle_timeout: float = 120.0,
        allowed_origins: Optional[list] = None,
    ):
        self.policy = policy
        self.host, self.port = host, port
        self.token = token
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.allowed_origins = allowed_origins
        self.connections = 0
        self.started = time.monotonic()
        self.connections_served = 0
        self._lock: Optional[asyncio.Lock] = None
        self._server = None
        self._loop = None

    def metadata(self) -> dict:
        return {**self.policy.metadata(), "max_message_bytes": self.max_message_bytes}

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.token is not None:
            try:
                given = request.headers.get("Authorization", "")
            except MultipleValuesError:
                return connection.respond(HTTPStatus.BAD_REQUEST, "send one Authorization header\n")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.token}".encode()):
                logger.warning(
                    "refused a connection from %s: bad or missing Api-Key", connection.remote_address
                )
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key\n"
                )
        if self.connections >= self.max_connections:
            logger.warning(
                "refused a connection from %s: %d connections open",
                connection.remote_address,
                self.connections,
            )
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections, retry later\n")
        return None

    async def _handle(self, websocket) -> None:
        peer = websocket.remote_address
        self.connections += 1
        self.connections_served += 1
        try:
            await websocket.send(pack(self.metadata()))
            while True:
                try:
                    frame = await asyncio.wait_for(websocket.recv(), timeout=self.idle_timeout)
                except asyncio.TimeoutError:
                    logger.info(
                        "%s: no complete message within %.0f s: disconnected", peer, self.idle_timeout
                    )
                    await websocket.close(1008, "idle or too slow")
                    return
                await websocket.send(await self._reply(frame, peer))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1

    async def _decode(self, frame):
        if isinstance(frame, str):
            raise RequestError(None, "expected a binary msgpack frame, got text")
        if len(frame) > DECODE_IN_THREAD_BYTES:
            message = await asyncio.to_thread(unpack, frame, self.max_message_bytes)
        else:
            message = unpack(frame, self.max_message_bytes)
        return self.policy.parse(message)

    async def _reply(self, frame, peer):
        received = time.perf_counter()
        try:
            request = await self._decode(frame)
        except (ProtocolError, RequestError) as error:
            return self._error_frame(peer, self.policy.refusal(error))
        async with self._lock:  # one inference at a time; asyncio.Lock wakes waiters in arrival order
            started = time.perf_counter()
            answer = await asyncio.to_thread(self.policy.answer, request)
            finished = time.perf_counter()
        if "error" in answer:
            return self._error_frame(peer, answer)
        timing = {"infer_ms": (finished - started) * 1e3, "queue_ms": (started - received) * 1e3}
        logger.info(
            "%s: %s infer %.1f ms, queued %.1f ms",
            peer,
            request.robot_type,
            timing["infer_ms"],
            timing["queue_ms"],
        )
        return pack({**answer, "server_timing": timing})

    def _error_frame(self, peer, answer: dict) -> str:
        """The text frame of a refusal or failure, and its log line; both bounded and escaped (the messages only
        repeat a peer's input through `shown`)."""
        field, message = answer["error"]["field"], answer["error"]["message"]
        logger.info(
            "%s: refused request: %s%s", peer, f"{field_name(field)}: " if field else "", shown(message, 1000)
        )
        return error_text(field, message)

    def summary(self) -> str:
        """One line: what this server did since it started."""
        return (
            f"{self.policy.summary()} on {self.connections_served} connections in "
            f"{time.monotonic() - self.started:.1f} s"
        )

    async def serve_forever(self, ready: Optional[threading.Event] = None) -> None:
        self.started = time.monotonic()
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        logging.getLogger("asyncio").addFilter(_RateLimitedLog("Too many open files"))
        logging.getLogger("websockets.server").addFilter(_RateLimitedLog("Too many open files"))
        async with serve(
            self._handle,
            self.host,
            self.port,
            max_size=self.max_message_bytes,
            compression=None,
            process_request=self._process_request,
            # Robots and scripts send no Origin header: only browsers are held to the list.
            origins=None if self.allowed_origins is None else [*self.allowed_origins, None],
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            logger.info(
                "serving %s on ws://%s:%d%s",
                self.policy.checkpoint["name"],
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


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit (a server holds one per connection)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return -1


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="checkpoint directory (converted or fine-tuned)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token",
        default=None,
        help="shared Api-Key clients must send; prefer the XR0_SERVER_TOKEN environment variable (a command line "
        "is visible to other local users)",
    )
    parser.add_argument(
        "--allow_unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without a token (anyone who reaches the port drives the robot)",
    )
    parser.add_argument(
        "--allowed_origins", nargs="+", default=None, help="accepted Origin headers (browsers)"
    )
    parser.add_argument("--max_message_mb", type=float, default=16.0)
    parser.add_argument("--max_connections", type=int, default=64)
    parser.add_argument(
        "--idle_timeout", type=float, default=120.0, help="seconds to send a complete message"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the DiT's Euler loop (the first request of each prompt length compiles it)",
    )
    parser.add_argument(
        "--cuda_graphs",
        action="store_true",
        help="replay the DiT's Euler loop from CUDA graphs, one captured per prompt length (CUDA only)",
    )
    add_guidance_arguments(parser)
    args = parser.parse_args(argv)
    try:
        guidance = guidance_from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    if args.token:
        logger.warning("--token is visible to other local users (ps, /proc); prefer XR0_SERVER_TOKEN")
    token = args.token or os.environ.get("XR0_SERVER_TOKEN")
    if args.host not in LOOPBACK_HOSTS and not token and not args.allow_unauthenticated:
        parser.error(
            f"--host {args.host} is reachable from other machines: set XR0_SERVER_TOKEN (or --token), or pass "
            "--allow_unauthenticated"
        )
    if args.host not in LOOPBACK_HOSTS and not token:
        logger.warning(
            "serving %s without a token: anyone who can reach this port can drive the policy", args.host
        )
    raise_open_file_limit()
    device = args.device or default_device()
    if args.cuda_graphs and not device.startswith("cuda"):
        parser.error(f"--cuda_graphs needs a CUDA device; the policy would run on {device}")
    with exit_on_interrupt(lambda: "before the server started"):
        policy = load_policy(args.model, device, guidance=guidance)
        if args.compile or args.cuda_graphs:
            policy.model.optimize_sampler(compile=args.compile, cuda_graphs=args.cuda_graphs)
    server = PolicyServer(
        policy,
        args.host,
        args.port,
        token,
        int(args.max_message_mb * 2**20),
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        allowed_origins=args.allowed_origins,
    )
    with exit_on_interrupt(server.summary):
        asyncio.run(server.serve_forever())


if __name__ == "__main__":
    main()
