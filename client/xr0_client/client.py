"""Client of the XR0 policy server (`xr0-serve`). openpi's `WebsocketClientPolicy` works too; this one adds
structured errors, a timeout and reconnection.

    from xr0_client import XR0Client
    with XR0Client("127.0.0.1", 8000) as policy:
        reply = policy.infer({"images": {...}, "instruction": "...", "state": state, "robot_type": "libero_all"})
        reply["actions"]  # (T, active dims), robot units
"""

import json
from typing import Optional

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from xr0_common.protocol import pack, unpack


class ServerError(RuntimeError):
    """The server refused a request; `field` names the observation field at fault (None if not one field)."""

    def __init__(self, field: Optional[str], message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ConnectionRejected(ConnectionError):
    """The server answered the websocket handshake with an HTTP error instead of a connection (401: the token is
    missing or wrong). An OSError, like every other reason a client cannot connect."""

    def __init__(self, uri: str, status: int, token_given: bool):
        hint = ""
        if status == 401:
            hint = (
                ": the token was not accepted"
                if token_given
                else ": the server wants a token (--token, or XR0_SERVER_TOKEN in the environment)"
            )
        super().__init__(f"{uri} rejected the connection with HTTP {status}{hint}")
        self.status = status


class XR0Client:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: Optional[int] = 8000,
        token: Optional[str] = None,
        timeout: float = 60.0,
        max_message_bytes: int = 64 * 2**20,
    ):
        self.uri = (
            host if host.startswith("ws") else f"ws://{host}" + (f":{port}" if port is not None else "")
        )
        self.token = token
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._connection = None
        self.metadata: dict = {}
        self.connect()

    def connect(self) -> None:
        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        try:
            connection = connect(
                self.uri,
                additional_headers=headers,
                compression=None,
                max_size=self.max_message_bytes,
                open_timeout=self.timeout,
            )
        except InvalidStatus as error:
            raise ConnectionRejected(self.uri, error.response.status_code, self.token is not None) from None
        # Entering the context is how websockets >= 17 wants a long-lived connection held; older ones return self.
        self._connection = connection.__enter__()
        self.metadata = unpack(self._connection.recv(timeout=self.timeout))

    def infer(self, observation: dict) -> dict:
        """One observation -> the server's reply (`actions`, `server_timing`, ...). Reconnects once if the
        connection dropped; raises ServerError when the server refuses the request."""
        try:
            self._connection.send(pack(observation))
        except ConnectionClosed:
            self.connect()
            self._connection.send(pack(observation))
        reply = self._connection.recv(timeout=self.timeout)
        if isinstance(reply, str):
            try:
                error = json.loads(reply)["error"]
            except (ValueError, KeyError, TypeError):
                raise ServerError(None, reply) from None
            raise ServerError(error.get("field"), error.get("message", ""))
        return unpack(reply)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def __enter__(self) -> "XR0Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
