"""The middleware seen from the ASGI side (docs: Security, "Logs"): a client that goes away
mid-body is not a server error, and the client address comes only from a trusted proxy's
X-Forwarded-For when that names an address."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import Message

TODOS = "/api/todos/"


def call(client: TestClient, method: str, path: str, messages: list[Message], **headers: str) -> list[Message]:
    """Runs one request through the app with these receive messages; what it sent back."""
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().replace("_", "-").encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": client.app_state.copy(),
    }
    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "content_type", "start"),
    [
        pytest.param(TODOS, "application/json", b'{"text": "half', id="json"),
        pytest.param("/api/auth/token", "application/x-www-form-urlencoded", b"username=alice%40exa", id="form"),
    ],
)
def test_a_client_that_disconnects_mid_body_is_not_a_server_error(
    client: TestClient,
    alice: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    path: str,
    content_type: str,
    start: bytes,
) -> None:
    before = client.get(TODOS, headers=alice).json()
    messages: list[Message] = [{"type": "http.request", "body": start, "more_body": True}, {"type": "http.disconnect"}]
    with caplog.at_level(logging.INFO):
        sent = call(
            client,
            "POST",
            path,
            messages,
            content_type=content_type,
            content_length="100",
            authorization=alice["Authorization"],
        )
    statuses = [message["status"] for message in sent if message["type"] == "http.response.start"]
    assert all(status < 500 for status in statuses), statuses
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
    assert client.get(TODOS, headers=alice).json() == before
