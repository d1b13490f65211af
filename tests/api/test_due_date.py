"""A todo's optional due date (revision 0002): set, changed, removed, kept by a PUT that
leaves it out (what a client of the release before it sends), refused when not a date."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.api.test_todos import TODOS, create, listed, stored
from tests.helpers import assert_422


def test_a_new_todo_has_no_due_date_unless_given(client: TestClient, alice: dict[str, str]) -> None:
    assert create(client, alice, text="no date")["due_date"] is None
    dated = create(client, alice, text="dated", due_date="2026-12-24")
    assert dated["due_date"] == "2026-12-24"
    assert stored(client, alice, dated["id"])["due_date"] == "2026-12-24"
    assert {todo["text"]: todo["due_date"] for todo in listed(client, alice, limit=100)}["dated"] == "2026-12-24"


def test_patch_sets_changes_and_removes_the_due_date(client: TestClient, alice: dict[str, str]) -> None:
    todo = create(client, alice, text="dated", due_date="2026-12-24")
    url = f"{TODOS}{todo['id']}"
    changed = client.patch(url, json={"due_date": "2027-01-31"}, headers=alice)
    assert changed.status_code == 200, changed.text
    assert changed.json()["due_date"] == "2027-01-31"
    untouched = client.patch(url, json={"completed": True}, headers=alice)
    assert untouched.json()["due_date"] == "2027-01-31"
    removed = client.patch(url, json={"due_date": None}, headers=alice)
    assert removed.json()["due_date"] is None
    assert stored(client, alice, todo["id"])["due_date"] is None


def test_put_replaces_the_due_date_only_when_sent(client: TestClient, alice: dict[str, str]) -> None:
    todo = create(client, alice, text="dated", due_date="2026-12-24")
    url = f"{TODOS}{todo['id']}"
    old_client = client.put(url, json={"text": "renamed", "completed": True}, headers=alice)
    assert old_client.status_code == 200, old_client.text
    assert old_client.json()["due_date"] == "2026-12-24"
    cleared = client.put(url, json={"text": "renamed", "completed": True, "due_date": None}, headers=alice)
    assert cleared.json()["due_date"] is None
    assert stored(client, alice, todo["id"])["due_date"] is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("24/12/2026", id="not-iso"),
        pytest.param("2026-02-30", id="no-such-day"),
        pytest.param("2026-12-24T10:00:00+01:00", id="a-time"),
        pytest.param(20261224, id="a-number"),
        pytest.param("", id="empty"),
    ],
)
def test_a_due_date_that_is_not_a_date_is_a_422(client: TestClient, alice: dict[str, str], value: object) -> None:
    assert_422(client.post(TODOS, json={"text": "x", "due_date": value}, headers=alice), ["body", "due_date"])
    texts = [todo["text"] for todo in listed(client, alice, limit=100)]
    assert "x" not in texts
