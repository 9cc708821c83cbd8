"""XR0 policy server: openpi's websocket protocol (msgpack + numpy), without pickle.

    python deploy/server.py --model <checkpoint dir> [--host 127.0.0.1] [--port 8000] [--token SECRET]

On connect the server sends its metadata (robot types it can serve, their views and chunk lengths). Each binary
frame is one observation:

    {"images": {view: uint8 (H, W, 3)}, "instruction": str, "state": float (D,), "robot_type": str,
     "seed": int (optional), "action_prefix": float (p, active dims) (optional, robot units)}

and gets `{"actions": float32 (T, active dims) in robot units (T = the robot type's chunk length), "robot_type": ..., "server_timing": {...}}`.
Every field is validated before it reaches the model; a bad request gets a TEXT frame
`{"error": {"field", "message"}}` (openpi clients raise it as RuntimeError) and the connection stays usable.
One inference runs at a time per model; waiting requests are served in arrival order. `GET /healthz` answers
200. With `--token` (or XR0_SERVER_TOKEN), clients must send `Authorization: Api-Key <token>`.
"""

import argparse
import asyncio
import hmac
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import ProtocolError, error_text, pack, unpack  # noqa: E402

logger = logging.getLogger("xr0.server")

OBSERVATION_KEYS = {"images", "instruction", "state", "robot_type", "seed", "action_prefix"}
REQUIRED_KEYS = {"images", "instruction", "state", "robot_type"}
MAX_INSTRUCTION_CHARS = 2000
IMAGE_SIDE_RANGE = (16, 4096)


class RequestError(ValueError):
    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field


@dataclass
class Request:
    images: dict
    instruction: str
    state: np.ndarray
    robot_type: str
    seed: Optional[int]
    action_prefix: Optional[np.ndarray]


def parse_request(message, processor) -> Request:
    """Checks every field of an observation message against the processor's robot registry."""
    if not isinstance(message, dict) or not all(isinstance(key, str) for key in message):
        raise RequestError(None, "the observation must be a map with string keys")
    unknown = set(message) - OBSERVATION_KEYS
    if unknown:
        raise RequestError(sorted(unknown)[0], f"unknown fields {sorted(unknown)}; allowed: {sorted(OBSERVATION_KEYS)}")
    missing = REQUIRED_KEYS - set(message)
    if missing:
        raise RequestError(sorted(missing)[0], f"missing fields {sorted(missing)}")

    robot_type = message["robot_type"]
    servable = servable_robot_types(processor)
    if not isinstance(robot_type, str) or robot_type not in servable:
        raise RequestError("robot_type", f"unknown robot_type {robot_type!r}; this server serves {sorted(servable)}")
    spec = processor.robot_spec(robot_type)

    images = message["images"]
    views = [key for key, _ in spec["views"]]
    if not isinstance(images, dict) or sorted(map(str, images)) != sorted(views):
        got = sorted(map(str, images)) if isinstance(images, dict) else type(images).__name__
        raise RequestError("images", f"expected a map with the views {views} of {robot_type!r}, got {got}")
    for view, image in images.items():
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise RequestError(f"images.{view}", f"expected a uint8 (H, W, 3) array, got {described}")
        low, high = IMAGE_SIDE_RANGE
        if not (low <= image.shape[0] <= high and low <= image.shape[1] <= high):
            raise RequestError(f"images.{view}", f"image sides must be in [{low}, {high}], got {image.shape[:2]}")

    instruction = message["instruction"]
    if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise RequestError("instruction", f"expected a non-empty string of at most {MAX_INSTRUCTION_CHARS} characters")

    state = _float_array("state", message["state"], ndim=1)
    if not 1 <= state.shape[0] <= processor.state_dim:
        raise RequestError("state", f"expected 1 to {processor.state_dim} values, got {state.shape[0]}")

    seed = message.get("seed")
    if seed is not None:
        if isinstance(seed, np.integer):
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise RequestError("seed", f"expected an int in [0, 2**63), got {seed!r}")

    prefix = message.get("action_prefix")
    if prefix is not None:
        prefix = _float_array("action_prefix", prefix, ndim=2)
        dims = processor.active_action_dims(robot_type)
        length = processor.chunk_length(robot_type)
        if not 1 <= prefix.shape[0] < length or prefix.shape[1] != dims:
            raise RequestError(
                "action_prefix",
                f"expected (p, {dims}) with 1 <= p < {length} (the chunk length of {robot_type!r}), got {prefix.shape}",
            )
    return Request(dict(images), instruction, state, robot_type, seed, prefix)


def _float_array(field: str, value, ndim: int) -> np.ndarray:
    if isinstance(value, list):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise RequestError(field, "expected numbers") from error
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.ndim != ndim:
        described = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise RequestError(field, f"expected a {ndim}-D numeric array, got {described}")
    if not np.isfinite(value).all():
        raise RequestError(field, "contains NaN or infinite values")
    return value.astype(np.float32)


def servable_robot_types(processor) -> dict:
    """Robot types with camera views and action statistics: the ones a request can name."""
    return {name: spec for name, spec in processor.robot_types.items() if "views" in spec and "action_std" in spec}


class XR0Policy:
    """Model + processor: a validated request -> actions in robot units. Used by the server and in-process."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    def __call__(self, request: Request) -> np.ndarray:
        inputs = self.processor(
            images=request.images, instruction=request.instruction, state=request.state, robot_type=request.robot_type
        ).to(self.model.device)
        # As the official server does: the mask in the model's dtype, so that a seed draws the official noise.
        inputs["action_mask"] = inputs["action_mask"].to(self.model.dtype)
        prefix = None
        if request.action_prefix is not None:
            prefix = torch.from_numpy(self.processor.normalize_action(request.action_prefix, request.robot_type))[None]
        with torch.inference_mode():
            actions = self.model(**inputs, seed=request.seed, action_prefix=prefix).actions
        return self.processor.decode_action(actions, request.robot_type)[0].numpy().astype(np.float32)


class PolicyServer:
    def __init__(self, policy: XR0Policy, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
                 max_message_bytes: int = 16 * 2**20, name: str = "xr0"):
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
                    "views": [key for key, _ in spec["views"]],
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
                logger.warning("refused a connection from %s: bad or missing Api-Key", connection.remote_address)
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key\n")
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
        logger.info("%s: %s infer %.1f ms, queued %.1f ms", peer, request.robot_type, timing["infer_ms"], timing["queue_ms"])
        return pack({"actions": actions, "robot_type": request.robot_type, "server_timing": timing})

    async def serve_forever(self, ready: Optional[threading.Event] = None) -> None:
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        async with serve(
            self._handle, self.host, self.port, max_size=self.max_message_bytes, compression=None,
            process_request=self._process_request,
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            logger.info("serving %s on ws://%s:%d%s", self.name, self.host, self.port, " (token required)" if self.token else "")
            if ready is not None:
                ready.set()
            await server.serve_forever()

    def start_in_thread(self) -> "PolicyServer":
        """Serve from a daemon thread (tests, benchmarks, in-process robots); returns once listening."""
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run_until_closed(ready)), daemon=True)
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


def load_policy(model_dir: str, device: str, dtype: torch.dtype) -> XR0Policy:
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype).to(device)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    return XR0Policy(model, processor)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (converted or fine-tuned)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("XR0_SERVER_TOKEN"), help="shared Api-Key clients must send")
    parser.add_argument("--max-message-mb", type=float, default=16.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        logger.warning("binding %s without --token: anyone who can reach this port can drive the policy", args.host)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    policy = load_policy(args.model, args.device, dtype)
    server = PolicyServer(policy, args.host, args.port, args.token, int(args.max_message_mb * 2**20), Path(args.model).name)
    asyncio.run(server.serve_forever())


if __name__ == "__main__":
    main()
