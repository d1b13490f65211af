"""ETags on todos and conditional requests (docs: Security, "Lost updates"): If-None-Match answers 304,
a stale If-Match answers 412 and changes nothing, so no update is silently lost."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from tests.api.test_todos import TODO_KEYS
from tests.helpers import ALICE, login
from tests.servers import server_env, start_uvicorn

TODOS = "/api/todos/"

# A strong entity tag (RFC 9110 8.8.3): If-Match compares strongly, so a weak one never matches.
STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
CHANGES = [
    pytest.param("PUT", {"text": "replaced", "completed": True}, id="put"),
    pytest.param("PATCH", {"text": "patched"}, id="patch"),
    pytest.param("DELETE", None, id="delete"),
]


def etag_of(response: Any) -> str:
    tag: str = response.headers["ETag"]
    assert STRONG_ETAG.fullmatch(tag), tag
    return tag


def read(client: TestClient, headers: dict[str, str], todo_id: int = 3) -> tuple[dict[str, Any], str]:
    response = client.get(f"{TODOS}{todo_id}", headers=headers)
    assert response.status_code == 200, response.text
    todo: dict[str, Any] = response.json()
    return todo, etag_of(response)


def change(client: TestClient, headers: dict[str, str], method: str, body: object, **extra: str) -> Any:
    return client.request(method, f"{TODOS}3", json=body, headers={**headers, **extra})


def assert_applied(client: TestClient, alice: dict[str, str], response: Any, method: str, body: Any) -> None:
    if method == "DELETE":
        assert response.status_code == 204, response.text
        assert client.get(f"{TODOS}3", headers=alice).status_code == 404
        return
    assert response.status_code == 200, response.text
    todo, tag = read(client, alice)
    assert {key: todo[key] for key in body} == body
    assert etag_of(response) == tag


# The header


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param("GET", f"{TODOS}3", None, 200, id="get"),
        pytest.param("POST", TODOS, {"text": "new"}, 201, id="create"),
        pytest.param("PUT", f"{TODOS}3", {"text": "put"}, 200, id="put"),
        pytest.param("PATCH", f"{TODOS}3", {"completed": True}, 200, id="patch"),
    ],
)
def test_todo_responses_carry_the_current_etag(
    client: TestClient, alice: dict[str, str], method: str, path: str, body: object, status: int
) -> None:
    response = client.request(method, path, json=body, headers=alice)
    assert response.status_code == status, response.text
    tag = etag_of(response)
    assert read(client, alice, response.json()["id"])[1] == tag


def test_etag_is_stable_across_reads_and_changes_with_every_update(client: TestClient, alice: dict[str, str]) -> None:
    _, first = read(client, alice)
    assert read(client, alice)[1] == first
    tags = [first]
    for body in ({"text": "one"}, {"completed": True}, {"text": "one", "completed": True}):
        response = client.patch(f"{TODOS}3", json=body, headers=alice)
        assert response.status_code == 200
        tags.append(etag_of(response))
    assert len(set(tags)) == len(tags)  # even a change that leaves the same text gets a new tag


def test_etags_differ_between_todos(client: TestClient, alice: dict[str, str]) -> None:
    assert read(client, alice, 3)[1] != read(client, alice, 4)[1]


def test_the_superuser_sees_the_owners_etag(client: TestClient, alice: dict[str, str], john: dict[str, str]) -> None:
    assert read(client, john, 3)[1] == read(client, alice, 3)[1]


# If-None-Match


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("{tag}", id="current"),
        pytest.param('"stale", {tag}', id="in-a-list"),
        pytest.param("W/{tag}", id="weak-form"),
    ],
)
def test_if_none_match_with_the_current_etag_is_304_without_a_body(
    client: TestClient, alice: dict[str, str], header: str
) -> None:
    _, tag = read(client, alice)
    response = client.get(f"{TODOS}3", headers={**alice, "If-None-Match": header.format(tag=tag)})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == tag


@pytest.mark.parametrize(
    "header",
    [
        pytest.param('"3.9223372036854775808"', id="version-over-int64"),
        pytest.param('"3.' + "9" * 5000 + '"', id="version-of-5000-digits"),
        pytest.param('W/"' + "9" * 5000 + '.1"', id="weak-id-of-5000-digits"),
    ],
)
def test_if_none_match_with_an_impossible_version_is_200(
    client: TestClient, alice: dict[str, str], header: str
) -> None:
    response = client.get(f"{TODOS}3", headers={**alice, "If-None-Match": header})
    assert response.status_code == 200, response.text
    assert etag_of(response) == read(client, alice)[1]


def test_if_none_match_with_an_old_etag_is_200_with_the_new_one(client: TestClient, alice: dict[str, str]) -> None:
    _, old = read(client, alice)
    assert client.patch(f"{TODOS}3", json={"text": "changed"}, headers=alice).status_code == 200
    response = client.get(f"{TODOS}3", headers={**alice, "If-None-Match": old})
    assert response.status_code == 200
    assert response.json()["text"] == "changed"
    assert etag_of(response) != old
    assert etag_of(response) == read(client, alice)[1]


def test_if_none_match_does_not_reveal_someone_elses_todo(
    client: TestClient, john: dict[str, str], alice: dict[str, str]
) -> None:
    _, tag = read(client, john, 1)
    for header in (tag, "*"):
        response = client.get(f"{TODOS}1", headers={**alice, "If-None-Match": header})
        assert response.status_code == 404, response.text
        assert "ETag" not in response.headers


# If-Match


@pytest.mark.parametrize(("method", "body"), CHANGES)
def test_stale_if_match_is_412_and_nothing_changes(
    client: TestClient, alice: dict[str, str], method: str, body: object
) -> None:
    _, old = read(client, alice)
    assert client.patch(f"{TODOS}3", json={"text": "someone else's edit"}, headers=alice).status_code == 200
    before, current = read(client, alice)
    response = change(client, alice, method, body, **{"If-Match": old})
    assert response.status_code == 412, response.text
    assert isinstance(response.json()["detail"], str)
    assert read(client, alice) == (before, current)


@pytest.mark.parametrize(("method", "body"), CHANGES)
@pytest.mark.parametrize(
    "header",
    [
        pytest.param('"made-up"', id="made-up"),
        pytest.param('"{tag}"', id="double-quoted"),
        # RFC 9110 13.1.1: If-Match uses the strong comparison; W/"x" never matches "x".
        pytest.param("W/{tag}", id="weak"),
        # Versions and ids no column can hold (docs: Security, "Resource limits"): a 412, never a 500.
        pytest.param('"3.9223372036854775808"', id="version-over-int64"),
        pytest.param('"3.2147483648"', id="version-over-int32"),
        pytest.param('"3.' + "9" * 5000 + '"', id="version-of-5000-digits"),
        pytest.param('"' + "9" * 5000 + '.1"', id="id-of-5000-digits"),
    ],
)
def test_an_if_match_that_is_not_the_current_etag_is_412(
    client: TestClient, alice: dict[str, str], method: str, body: object, header: str
) -> None:
    before, tag = read(client, alice)
    response = change(client, alice, method, body, **{"If-Match": header.format(tag=tag)})
    assert response.status_code == 412, response.text
    assert read(client, alice) == (before, tag)


@pytest.mark.parametrize(("method", "body"), CHANGES)
@pytest.mark.parametrize(
    "header",
    [
        pytest.param("{tag}", id="current"),
        pytest.param('"stale", {tag}', id="in-a-list"),
        pytest.param('"3.9223372036854775808", {tag}', id="in-a-list-after-an-overflow"),
        pytest.param("*", id="star"),
    ],
)
def test_a_matching_if_match_is_applied(
    client: TestClient, alice: dict[str, str], method: str, body: Any, header: str
) -> None:
    _, tag = read(client, alice)
    response = change(client, alice, method, body, **{"If-Match": header.format(tag=tag)})
    assert_applied(client, alice, response, method, body)
    if method != "DELETE":
        assert etag_of(response) != tag


@pytest.mark.parametrize(("method", "body"), CHANGES)
def test_without_if_match_a_change_is_applied_as_before(
    client: TestClient, alice: dict[str, str], method: str, body: Any
) -> None:
    assert client.patch(f"{TODOS}3", json={"text": "moved on"}, headers=alice).status_code == 200
    assert_applied(client, alice, change(client, alice, method, body), method, body)


@pytest.mark.parametrize(("method", "body"), CHANGES)
@pytest.mark.parametrize("todo_id", [pytest.param(1, id="someone-elses"), pytest.param(9999, id="unknown")])
@pytest.mark.parametrize("header", [pytest.param('"stale"', id="stale"), pytest.param("*", id="star")])
def test_if_match_on_someone_elses_or_unknown_todo_is_404(
    client: TestClient,
    alice: dict[str, str],
    john: dict[str, str],
    method: str,
    body: object,
    todo_id: int,
    header: str,
) -> None:
    before = [read(client, john, 1), read(client, john, 2)]
    response = client.request(method, f"{TODOS}{todo_id}", json=body, headers={**alice, "If-Match": header})
    assert response.status_code == 404, response.text
    assert [read(client, john, 1), read(client, john, 2)] == before


# Two clients, one todo


def test_the_second_of_two_clients_editing_one_todo_is_refused(client: TestClient) -> None:
    phone = login(client, *ALICE)
    laptop = login(client, *ALICE)
    _, phone_tag = read(client, phone)
    _, laptop_tag = read(client, laptop)
    assert phone_tag == laptop_tag

    first = client.patch(f"{TODOS}3", json={"text": "from the phone"}, headers={**phone, "If-Match": phone_tag})
    assert first.status_code == 200, first.text
    second = client.put(
        f"{TODOS}3", json={"text": "from the laptop", "completed": True}, headers={**laptop, "If-Match": laptop_tag}
    )
    assert second.status_code == 412, second.text

    stored, tag = read(client, laptop)
    assert {key: stored[key] for key in TODO_KEYS} == first.json()
    assert (stored["text"], stored["completed"]) == ("from the phone", False)
    assert tag == etag_of(first)

    retried = client.put(
        f"{TODOS}3", json={"text": "from the laptop", "completed": True}, headers={**laptop, "If-Match": tag}
    )
    assert retried.status_code == 200, retried.text  # after re-reading, the laptop may apply its change
    assert read(client, phone)[0]["text"] == "from the laptop"


@pytest.mark.process
def test_two_racing_writers_with_one_etag_get_one_200_and_one_412(database_url: str) -> None:
    server = start_uvicorn(server_env(database_url, RESET_DB="1"))
    try:
        server.wait_healthy()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            token = http.post("/api/auth/token", data={"username": ALICE[0], "password": ALICE[1]})
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        for round_ in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as http:
                tag = etag_of(http.get(f"{TODOS}3", headers=headers))
            barrier = Barrier(2)
            methods = ("PATCH", "PUT") if round_ % 2 else ("PUT", "PATCH")

            def write(
                index: int, tag: str = tag, barrier: Barrier = barrier, methods: tuple[str, ...] = methods
            ) -> Any:
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    body = {"text": f"writer {index}", "completed": bool(index)}
                    barrier.wait()
                    return http.request(methods[index], f"{TODOS}3", json=body, headers={**headers, "If-Match": tag})

            with ThreadPoolExecutor(2) as pool:
                responses = list(pool.map(write, range(2)))
            statuses = [response.status_code for response in responses]
            assert sorted(statuses) == [200, 412], statuses
            winner = responses[statuses.index(200)].json()
            with httpx.Client(base_url=server.url, timeout=30) as http:
                stored = http.get(f"{TODOS}3", headers=headers).json()
            assert (stored["text"], stored["completed"]) == (winner["text"], winner["completed"])
    finally:
        server.stop()
