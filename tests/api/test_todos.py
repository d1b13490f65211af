"""The todos endpoints, checked against the docs (API, "Endpoints"): status, body, headers and what is stored."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from tests.helpers import assert_422, utc

pytestmark = pytest.mark.twin  # also run on the benchmark's FastAPI twin

TODOS = "/api/todos/"
TODO_KEYS = {"id", "text", "completed", "owner_id", "created_at", "updated_at", "due_date"}
USER_KEYS = {"id", "email", "fname", "lname", "is_superuser", "created_at", "updated_at"}
BAD_IDS = [
    pytest.param("-1", id="negative"),
    pytest.param(str(2**63), id="int64-overflow"),
    pytest.param(str(10**30), id="huge"),
    pytest.param("abc", id="not-an-int"),
    pytest.param("1.5", id="float"),
]


def assert_404(response: Any) -> None:
    assert response.status_code == 404, response.text
    assert isinstance(response.json()["detail"], str)


def create(client: TestClient, headers: dict[str, str], **body: object) -> dict[str, Any]:
    response = client.post(TODOS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    todo: dict[str, Any] = response.json()
    return todo


def listed(client: TestClient, headers: dict[str, str], **params: object) -> list[dict[str, Any]]:
    response = client.get(TODOS, params={**params, "count": "true"}, headers=headers)  # type: ignore[dict-item]
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Total-Count"]) >= len(response.json())
    todos: list[dict[str, Any]] = response.json()
    return todos


def stored(client: TestClient, headers: dict[str, str], todo_id: int) -> dict[str, Any]:
    response = client.get(f"{TODOS}{todo_id}", headers=headers)
    assert response.status_code == 200, response.text
    todo: dict[str, Any] = response.json()
    return todo


# List


def test_list_returns_only_the_callers_todos_ordered_by_id(client: TestClient, alice: dict[str, str]) -> None:
    response = client.get(TODOS, params={"count": "true"}, headers=alice)
    assert response.status_code == 200
    assert response.headers["X-Total-Count"] == "2"
    todos = response.json()
    assert [todo["id"] for todo in todos] == [3, 4]
    for todo in todos:
        assert todo.keys() == TODO_KEYS
        assert todo["owner_id"] == 2
        utc(todo["created_at"])
        utc(todo["updated_at"])


def test_superuser_lists_everyones_todos(client: TestClient, john: dict[str, str], alice: dict[str, str]) -> None:
    new = create(client, alice, text="later")
    response = client.get(TODOS, params={"count": "true"}, headers=john)
    assert response.status_code == 200
    assert [todo["id"] for todo in response.json()] == [1, 2, 3, 4, new["id"]]
    assert response.headers["X-Total-Count"] == "5"


@pytest.mark.parametrize(
    ("who", "user_id", "ids"),
    [
        pytest.param("alice", 2, [3, 4], id="own-user-id"),
        pytest.param("john", 2, [3, 4], id="superuser-other-user"),
        pytest.param("john", 1, [1, 2], id="superuser-own"),
    ],
)
def test_list_filtered_by_user_id(
    client: TestClient, request: pytest.FixtureRequest, who: str, user_id: int, ids: list[int]
) -> None:
    headers: dict[str, str] = request.getfixturevalue(who)
    todos = listed(client, headers, user_id=user_id)
    assert [todo["id"] for todo in todos] == ids
    assert {todo["owner_id"] for todo in todos} == {user_id}


@pytest.mark.parametrize("user_id", [pytest.param(1, id="superusers"), pytest.param(999, id="unknown-user")])
def test_list_of_someone_elses_user_id_is_forbidden(client: TestClient, alice: dict[str, str], user_id: int) -> None:
    response = client.get(TODOS, params={"user_id": user_id}, headers=alice)
    assert response.status_code == 403
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("completed", [True, False])
def test_list_filtered_by_completed(client: TestClient, alice: dict[str, str], completed: bool) -> None:
    for index in range(3):
        create(client, alice, text=f"todo {index}", completed=index % 2 == 0)
    everything = listed(client, alice, limit=100)
    expected = [todo["id"] for todo in everything if todo["completed"] is completed]
    response = client.get(TODOS, params={"completed": str(completed).lower(), "count": "true"}, headers=alice)
    assert response.status_code == 200
    assert [todo["id"] for todo in response.json()] == expected
    assert response.headers["X-Total-Count"] == str(len(expected))


def test_list_pages_with_offset_and_limit(client: TestClient, alice: dict[str, str]) -> None:
    for index in range(12):
        create(client, alice, text=f"todo {index}")
    everything = [todo["id"] for todo in listed(client, alice, limit=100)]
    assert len(everything) == 14
    assert everything == sorted(everything)

    first = client.get(TODOS, params={"count": "true"}, headers=alice)
    assert len(first.json()) == 10  # default limit
    assert first.headers["X-Total-Count"] == "14"
    rest = client.get(TODOS, params={"offset": 10, "count": "true"}, headers=alice)
    assert rest.headers["X-Total-Count"] == "14"
    assert [todo["id"] for todo in first.json() + rest.json()] == everything
    assert [todo["id"] for todo in listed(client, alice, offset=3, limit=2)] == everything[3:5]
    assert listed(client, alice, offset=14) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("offset", "-1", id="negative-offset"),
        pytest.param("offset", str(2**63), id="int64-overflow-offset"),
        pytest.param("offset", str(10**30), id="huge-offset"),
        pytest.param("offset", "abc", id="text-offset"),
        pytest.param("limit", "0", id="zero-limit"),
        pytest.param("limit", "101", id="limit-over-100"),
        pytest.param("limit", "-1", id="negative-limit"),
        pytest.param("limit", str(10**30), id="huge-limit"),
        pytest.param("completed", "maybe", id="not-a-bool"),
        pytest.param("user_id", "abc", id="text-user-id"),
        pytest.param("user_id", str(10**30), id="huge-user-id"),
    ],
)
def test_list_rejects_bad_query_parameters(client: TestClient, john: dict[str, str], name: str, value: str) -> None:
    assert_422(client.get(TODOS, params={name: value}, headers=john), ["query", name])


# Keyset pages: after_id and the Link header; the total only with count=true (docs: API, "Lists and paging")

NO_KEYSET = "no keyset pages: it ignores after_id and count, sends no Link and always counts"
KEYSET_DIFFERS = [pytest.mark.twin_differs(NO_KEYSET), pytest.mark.twin_differs(NO_KEYSET, twin="litestar")]


def next_link(response: Any) -> str | None:
    """The URL of the RFC 8288 `rel="next"` link, or None."""
    link = response.headers.get("Link")
    if link is None:
        return None
    target, relation = link.split(";", 1)
    assert relation.strip() == 'rel="next"', link
    assert target[:1] + target[-1:] == "<>", link
    return str(target[1:-1])


def pages(client: TestClient, headers: dict[str, str], **params: object) -> list[list[dict[str, Any]]]:
    """Every page, following Link from the first."""
    response = client.get(TODOS, params=params, headers=headers)  # type: ignore[arg-type]
    found = []
    while True:
        assert response.status_code == 200, response.text
        found.append(response.json())
        url = next_link(response)
        if url is None:
            return found
        assert urlsplit(url).path == TODOS
        response = client.get(url, headers=headers)


@pytest.mark.parametrize(
    ("who", "params"),
    [
        pytest.param("alice", {}, id="own"),
        pytest.param("alice", {"completed": "true"}, id="own-completed"),
        pytest.param("alice", {"completed": "false", "count": "true"}, id="own-not-completed-counted"),
        pytest.param("john", {}, id="superuser-everyone"),
        pytest.param("john", {"user_id": 2}, id="superuser-one-user"),
        pytest.param("john", {"user_id": 2, "completed": "false"}, id="superuser-one-user-not-completed"),
    ],
)
@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_following_link_lists_each_todo_once_in_id_order(
    client: TestClient, request: pytest.FixtureRequest, alice: dict[str, str], who: str, params: dict[str, object]
) -> None:
    for index in range(11):
        create(client, alice, text=f"todo {index}", completed=index % 3 == 0)
    headers: dict[str, str] = request.getfixturevalue(who)
    expected = [todo["id"] for todo in listed(client, headers, limit=100, **params)]
    assert len(expected) > 3

    found = pages(client, headers, limit=3, **params)

    assert [todo["id"] for page in found for todo in page] == expected
    assert [len(page) for page in found[:-1]] == [3] * (len(found) - 1)
    assert 1 <= len(found[-1]) <= 3


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_link_keeps_the_filters_and_the_limit(client: TestClient, john: dict[str, str], alice: dict[str, str]) -> None:
    for index in range(2):
        create(client, alice, text=f"todo {index}")
    response = client.get(TODOS, params={"user_id": 2, "completed": "false", "count": "true", "limit": 1}, headers=john)
    assert response.status_code == 200
    [first] = response.json()
    url = next_link(response)
    assert url is not None
    assert urlsplit(url).path == TODOS
    assert parse_qs(urlsplit(url).query) == {
        "after_id": [str(first["id"])],
        "limit": ["1"],
        "user_id": ["2"],
        "completed": ["false"],
        "count": ["true"],
    }


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_a_link_from_an_offset_page_goes_on_after_its_last_todo(client: TestClient, alice: dict[str, str]) -> None:
    for index in range(4):
        create(client, alice, text=f"todo {index}")
    everything = [todo["id"] for todo in listed(client, alice, limit=100)]
    response = client.get(TODOS, params={"offset": 2, "limit": 2}, headers=alice)
    url = next_link(response)
    assert url is not None
    assert "offset" not in parse_qs(urlsplit(url).query)
    assert [todo["id"] for todo in client.get(url, headers=alice).json()] == everything[4:6]


@pytest.mark.parametrize(
    "params", [pytest.param({}, id="fewer-than-a-page"), pytest.param({"limit": 2}, id="exactly-a-page")]
)
def test_the_last_page_has_no_link(client: TestClient, alice: dict[str, str], params: dict[str, object]) -> None:
    response = client.get(TODOS, params=params, headers=alice)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert [todo["id"] for todo in response.json()] == [3, 4]
    assert "Link" not in response.headers


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
@pytest.mark.parametrize(
    ("after_id", "ids"),
    [pytest.param(3, [4], id="the-last-after-a-cursor"), pytest.param(10**6, [], id="after-the-last")],
)
def test_the_last_page_after_a_cursor_has_no_link(
    client: TestClient, alice: dict[str, str], after_id: int, ids: list[int]
) -> None:
    response = client.get(TODOS, params={"after_id": after_id, "limit": 1}, headers=alice)
    assert response.status_code == 200
    assert [todo["id"] for todo in response.json()] == ids
    assert "Link" not in response.headers


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_after_id_starts_after_that_id(client: TestClient, john: dict[str, str]) -> None:
    response = client.get(TODOS, params={"after_id": 2, "count": "true"}, headers=john)
    assert response.status_code == 200
    assert [todo["id"] for todo in response.json()] == [3, 4]
    assert response.headers["X-Total-Count"] == "4"  # the total ignores the cursor


@pytest.mark.parametrize(
    ("who", "params"),
    [
        pytest.param("alice", {}, id="own"),
        pytest.param("john", {}, id="everyone"),
        pytest.param("john", {"user_id": 2, "limit": 1}, id="one-user-one-per-page"),
        pytest.param("john", {"completed": "true"}, id="completed"),
        pytest.param("alice", {"completed": "false", "offset": 1}, id="own-not-completed-offset"),
    ],
)
def test_count_true_sends_the_total(
    client: TestClient, request: pytest.FixtureRequest, alice: dict[str, str], who: str, params: dict[str, object]
) -> None:
    for index in range(3):
        create(client, alice, text=f"todo {index}", completed=index % 2 == 0)
    headers: dict[str, str] = request.getfixturevalue(who)
    every = {key: value for key, value in params.items() if key not in ("limit", "offset")}
    everything = client.get(TODOS, params={**every, "limit": 100}, headers=headers).json()  # type: ignore[dict-item]
    response = client.get(TODOS, params={**params, "count": "true"}, headers=headers)  # type: ignore[dict-item]
    assert response.status_code == 200
    assert response.headers["X-Total-Count"] == str(len(everything))


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
@pytest.mark.parametrize("params", [pytest.param({}, id="not-asked"), pytest.param({"count": "false"}, id="false")])
def test_without_count_there_is_no_total(client: TestClient, alice: dict[str, str], params: dict[str, str]) -> None:
    response = client.get(TODOS, params=params, headers=alice)
    assert response.status_code == 200
    assert "X-Total-Count" not in response.headers


@pytest.mark.twin_differs("it does not validate the query: a bad after_id or count is ignored", twin="litestar")
@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("after_id", "0", id="zero"),
        pytest.param("after_id", "-1", id="negative"),
        pytest.param("after_id", str(2**31), id="past-int32"),
        pytest.param("after_id", str(10**30), id="huge"),
        pytest.param("after_id", "abc", id="text"),
        pytest.param("after_id", "", id="empty"),
        pytest.param("count", "maybe", id="count-not-a-bool"),
    ],
)
def test_list_rejects_a_bad_cursor_or_count(client: TestClient, john: dict[str, str], name: str, value: str) -> None:
    assert_422(client.get(TODOS, params={name: value}, headers=john), ["query", name])


@KEYSET_DIFFERS[0]
@KEYSET_DIFFERS[1]
def test_an_offset_counts_from_the_cursor(client: TestClient, john: dict[str, str]) -> None:
    response = client.get(TODOS, params={"after_id": 1, "offset": 1, "count": "true"}, headers=john)
    assert response.status_code == 200
    assert [todo["id"] for todo in response.json()] == [3, 4]
    assert response.headers["X-Total-Count"] == "4"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", TODOS, None, id="list"),
        pytest.param("POST", TODOS, {"text": "x"}, id="create"),
        pytest.param("GET", f"{TODOS}1", None, id="get"),
        pytest.param("PUT", f"{TODOS}1", {"text": "x"}, id="put"),
        pytest.param("PATCH", f"{TODOS}1", {"text": "x"}, id="patch"),
        pytest.param("DELETE", f"{TODOS}1", None, id="delete"),
    ],
)
def test_every_todo_endpoint_needs_a_token(
    client: TestClient, john: dict[str, str], method: str, path: str, body: object
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored(client, john, 1)["text"] != "x"


# Create


def test_create_returns_201_with_location_and_defaults(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post(TODOS, json={"text": "buy milk"}, headers=alice)
    assert response.status_code == 201
    todo = response.json()
    assert todo.keys() == TODO_KEYS
    assert (todo["text"], todo["completed"], todo["owner_id"]) == ("buy milk", False, 2)
    utc(todo["created_at"])
    utc(todo["updated_at"])
    location = response.headers["Location"]
    assert urlsplit(location).path == f"{TODOS}{todo['id']}"
    read_back = client.get(location, headers=alice).json()
    assert {key: read_back[key] for key in TODO_KEYS} == todo
    assert todo["id"] in [item["id"] for item in listed(client, alice)]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x", id="one-char"),
        pytest.param("x" * 1000, id="1000-chars"),
        pytest.param("ä" * 1000, id="1000-multibyte-chars"),
    ],
)
def test_create_accepts_text_of_1_to_1000_characters(client: TestClient, alice: dict[str, str], text: str) -> None:
    todo = create(client, alice, text=text, completed=True)
    assert (todo["text"], todo["completed"]) == (text, True)
    assert stored(client, alice, todo["id"])["text"] == text


def test_create_ignores_unknown_and_server_owned_fields(
    client: TestClient, alice: dict[str, str], john: dict[str, str]
) -> None:
    old = "2000-01-01T00:00:00+00:00"
    body = {"text": "mine", "id": 999, "owner_id": 1, "created_at": old, "updated_at": old, "colour": "red"}
    response = client.post(TODOS, json=body, headers=alice)
    assert response.status_code == 201, response.text
    todo = response.json()
    assert todo.keys() == TODO_KEYS
    assert todo["id"] != 999
    assert todo["owner_id"] == 2
    assert utc(todo["created_at"]).year > 2000
    assert utc(todo["updated_at"]).year > 2000
    assert stored(client, john, todo["id"])["owner_id"] == 2
    assert_404(client.get(f"{TODOS}999", headers=john))


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"text": ""}, ["body", "text"], id="empty-text"),
        pytest.param({"text": "x" * 1001}, ["body", "text"], id="1001-chars"),
        pytest.param({}, ["body", "text"], id="missing-text"),
        pytest.param({"text": None}, ["body", "text"], id="null-text"),
        pytest.param({"text": 123}, ["body", "text"], id="number-text"),
        pytest.param({"text": "x", "completed": "maybe"}, ["body", "completed"], id="not-a-bool"),
    ],
)
def test_create_rejects_invalid_bodies(
    client: TestClient, alice: dict[str, str], body: dict[str, object], loc: list[str]
) -> None:
    assert_422(client.post(TODOS, json=body, headers=alice), loc)
    assert len(listed(client, alice)) == 2


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(
            b'{"text": ',
            id="malformed-json",
            marks=pytest.mark.twin_differs("Litestar answers a body it cannot parse with a 400", twin="litestar"),
        ),
        pytest.param(b"", id="empty-body"),
        pytest.param(b"[]", id="json-array"),
        pytest.param(b'"text"', id="json-string"),
    ],
)
def test_create_rejects_bodies_that_are_not_a_json_object(
    client: TestClient, alice: dict[str, str], content: bytes
) -> None:
    headers = {**alice, "Content-Type": "application/json"}
    response = client.post(TODOS, content=content, headers=headers)
    assert response.status_code == 422, response.text
    assert [error["loc"][0] for error in response.json()["detail"]] == ["body"] * len(response.json()["detail"])
    assert len(listed(client, alice)) == 2


@pytest.mark.twin_differs("FastAPI reads only JSON bodies and answers any other content type with a 422, not 415")
@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"buy milk", "text/plain", id="text-plain"),
        pytest.param(b"text=buy+milk", "application/x-www-form-urlencoded", id="form"),
    ],
)
@pytest.mark.twin_differs("Litestar answers a body that is not JSON with a 400", twin="litestar")
def test_create_with_a_non_json_content_type_is_415(
    client: TestClient, alice: dict[str, str], content: bytes, content_type: str
) -> None:
    response = client.post(TODOS, content=content, headers={**alice, "Content-Type": content_type})
    assert response.status_code == 415
    assert isinstance(response.json()["detail"], str)
    assert len(listed(client, alice)) == 2


# Get


def test_get_returns_the_todo_with_its_owner(client: TestClient, alice: dict[str, str]) -> None:
    response = client.get(f"{TODOS}3", headers=alice)
    assert response.status_code == 200
    todo = response.json()
    assert todo.keys() == TODO_KEYS | {"owner"}
    assert (todo["id"], todo["owner_id"]) == (3, 2)
    assert todo["owner"].keys() == USER_KEYS
    assert (todo["owner"]["id"], todo["owner"]["email"]) == (2, "alice@example.com")
    utc(todo["owner"]["created_at"])


def test_superuser_may_read_anyones_todo(client: TestClient, john: dict[str, str]) -> None:
    todo = stored(client, john, 3)
    assert (todo["owner_id"], todo["owner"]["id"], todo["owner"]["is_superuser"]) == (2, 2, False)


@pytest.mark.parametrize("todo_id", [pytest.param(1, id="someone-elses"), pytest.param(9999, id="unknown")])
def test_get_someone_elses_or_unknown_todo_is_404(client: TestClient, alice: dict[str, str], todo_id: int) -> None:
    assert_404(client.get(f"{TODOS}{todo_id}", headers=alice))


@pytest.mark.twin_differs(
    "Litestar names the path parameter (todo_id, user_id) and answers a non-integer with a 404", twin="litestar"
)
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_path_ids_are_422(client: TestClient, john: dict[str, str], method: str, bad_id: str) -> None:
    body = None if method in ("GET", "DELETE") else {"text": "x"}
    assert_422(client.request(method, f"{TODOS}{bad_id}", json=body, headers=john), ["path", "id"])


# Replace


def test_put_replaces_text_and_completed(client: TestClient, alice: dict[str, str]) -> None:
    before = stored(client, alice, 3)
    response = client.put(f"{TODOS}3", json={"text": "replaced", "completed": True}, headers=alice)
    assert response.status_code == 200
    todo = response.json()
    assert todo.keys() == TODO_KEYS
    assert (todo["id"], todo["text"], todo["completed"], todo["owner_id"]) == (3, "replaced", True, 2)
    assert todo["created_at"] == before["created_at"]
    assert utc(todo["updated_at"]) > utc(before["updated_at"])
    after = stored(client, alice, 3)
    assert {key: after[key] for key in TODO_KEYS} == todo


def test_put_is_a_full_replace(client: TestClient, alice: dict[str, str]) -> None:
    todo = create(client, alice, text="first", completed=True)
    response = client.put(f"{TODOS}{todo['id']}", json={"text": "second"}, headers=alice)
    assert response.status_code == 200
    assert (response.json()["text"], response.json()["completed"]) == ("second", False)
    assert stored(client, alice, todo["id"])["completed"] is False


def test_put_accepts_a_body_id_equal_to_the_path_id(client: TestClient, alice: dict[str, str]) -> None:
    response = client.put(f"{TODOS}3", json={"id": 3, "text": "same id"}, headers=alice)
    assert response.status_code == 200
    assert (response.json()["id"], response.json()["text"]) == (3, "same id")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"id": 4, "text": "other id"}, id="body-id-differs"),
        pytest.param({"completed": True}, id="missing-text"),
        pytest.param({"text": ""}, id="empty-text"),
        pytest.param({"text": "x" * 1001}, id="1001-chars"),
    ],
)
def test_put_rejects_invalid_bodies(client: TestClient, alice: dict[str, str], body: dict[str, object]) -> None:
    before = stored(client, alice, 3)
    response = client.put(f"{TODOS}3", json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert all(error["loc"][0] in ("body", "path") for error in response.json()["detail"])
    assert stored(client, alice, 3) == before
    assert stored(client, alice, 4)["text"] != "other id"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize(
    ("who", "todo_id"),
    [
        pytest.param("alice", 1, id="someone-elses"),
        pytest.param("john", 3, id="superuser-on-someone-elses"),
        pytest.param("alice", 9999, id="unknown"),
    ],
)
def test_updating_someone_elses_or_unknown_todo_is_404(
    client: TestClient, request: pytest.FixtureRequest, john: dict[str, str], method: str, who: str, todo_id: int
) -> None:
    headers: dict[str, str] = request.getfixturevalue(who)
    before = listed(client, john, limit=100)
    assert_404(client.request(method, f"{TODOS}{todo_id}", json={"text": "hijacked"}, headers=headers))
    assert listed(client, john, limit=100) == before


# Patch


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"completed": True}, id="completed-only"),
        pytest.param({"text": "patched"}, id="text-only"),
        pytest.param({"text": "both", "completed": True}, id="both"),
        pytest.param({"text": "patched", "id": 99, "owner_id": 1, "colour": "red"}, id="unknown-fields-ignored"),
    ],
)
def test_patch_changes_only_the_fields_sent(
    client: TestClient, alice: dict[str, str], change: dict[str, object]
) -> None:
    before = create(client, alice, text="original", completed=False)
    response = client.patch(f"{TODOS}{before['id']}", json=change, headers=alice)
    assert response.status_code == 200
    todo = response.json()
    assert todo.keys() == TODO_KEYS
    sent = {key: value for key, value in change.items() if key in ("text", "completed")}
    assert {**todo, "updated_at": None} == {**before, **sent, "updated_at": None}
    assert utc(todo["updated_at"]) > utc(before["updated_at"])
    after = stored(client, alice, before["id"])
    assert {key: after[key] for key in TODO_KEYS} == todo


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"text": None}, ["body", "text"], id="null-text"),
        pytest.param({"completed": None}, ["body", "completed"], id="null-completed"),
        pytest.param({"text": ""}, ["body", "text"], id="empty-text"),
        pytest.param({"text": "x" * 1001}, ["body", "text"], id="1001-chars"),
        pytest.param({"completed": "maybe"}, ["body", "completed"], id="not-a-bool"),
    ],
)
def test_patch_rejects_invalid_fields(
    client: TestClient, alice: dict[str, str], body: dict[str, object], loc: list[str]
) -> None:
    before = stored(client, alice, 3)
    assert_422(client.patch(f"{TODOS}3", json=body, headers=alice), loc)
    assert stored(client, alice, 3) == before


# Delete


def test_delete_answers_204_and_the_todo_is_gone(client: TestClient, alice: dict[str, str]) -> None:
    response = client.delete(f"{TODOS}3", headers=alice)
    assert response.status_code == 204
    assert response.content == b""
    assert_404(client.get(f"{TODOS}3", headers=alice))
    assert_404(client.delete(f"{TODOS}3", headers=alice))
    assert [todo["id"] for todo in listed(client, alice)] == [4]


@pytest.mark.parametrize(
    ("who", "todo_id"),
    [
        pytest.param("alice", 1, id="someone-elses"),
        pytest.param("john", 3, id="superuser-on-someone-elses"),
        pytest.param("alice", 9999, id="unknown"),
    ],
)
def test_delete_someone_elses_or_unknown_todo_is_404_and_keeps_it(
    client: TestClient, request: pytest.FixtureRequest, john: dict[str, str], who: str, todo_id: int
) -> None:
    headers: dict[str, str] = request.getfixturevalue(who)
    assert_404(client.delete(f"{TODOS}{todo_id}", headers=headers))
    assert [todo["id"] for todo in listed(client, john)] == [1, 2, 3, 4]


# Trailing slash


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [pytest.param("GET", None, 200, id="list"), pytest.param("POST", {"text": "no slash"}, 201, id="create")],
)
@pytest.mark.twin_differs("FastAPI answers a collection path without its trailing slash with a 307")
def test_collection_answers_without_its_trailing_slash(
    client: TestClient, alice: dict[str, str], method: str, body: object, status: int
) -> None:
    """docs: API: paths with a trailing slash also answer without it, directly (no 307)."""
    response = client.request(method, TODOS.rstrip("/"), json=body, headers=alice)
    assert response.status_code == status, response.text
    if method == "POST":
        assert "no slash" in [todo["text"] for todo in listed(client, alice)]
