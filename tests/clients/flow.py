"""The scripted flow with the Python client that openapi-python-client generates from
openapi/openapi.json (tests/test_clients.py generates it into tests/clients/generated/python,
type-checks it and this file with `mypy --strict`, then runs this against a live server).

Usage: python flow.py BASE_URL EMAIL, with the generated package on PYTHONPATH.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from asgi_todo_client import AuthenticatedClient, Client
from asgi_todo_client.api.auth import login, logout, me
from asgi_todo_client.api.todos import create_todo, delete_todo, get_todo, list_todos, replace_todo, update_todo
from asgi_todo_client.api.users import change_password, signup
from asgi_todo_client.models import (
    ErrorMessage,
    Logout,
    PasswordChange,
    PasswordGrant,
    RefreshGrant,
    TodoCreate,
    TodoPatch,
    TodoRead,
    TodoReadNested,
    TodoReplace,
    Token,
    UserCreate,
    UserRead,
    ValidationErrorBody,
)

if TYPE_CHECKING:  # a form without its grant's fields does not type-check (the API would refuse it)
    PasswordGrant()  # type: ignore[call-arg]

PASSWORD = "first password 1"
NEW_PASSWORD = "second password 2"


def _token(client: Client, email: str, password: str) -> Token:
    token = login.sync(client=client, body=PasswordGrant(username=email, password=password))
    assert isinstance(token, Token), token
    assert token.token_type == "bearer"
    assert token.expires_in > 0
    return token


def _as(base_url: str, token: Token) -> AuthenticatedClient:
    return AuthenticatedClient(base_url=base_url, token=token.access_token)


def _error(parsed: object, detail: str) -> None:
    assert isinstance(parsed, ErrorMessage), parsed
    assert parsed.detail == detail, parsed.detail


def run(base_url: str, email: str) -> None:
    with Client(base_url=base_url) as public:
        _flow(public, base_url, email)


def _flow(public: Client, base_url: str, email: str) -> None:
    # Sign-up, then the same email again.
    created = signup.sync_detailed(client=public, body=UserCreate(email=email, password=PASSWORD, fname="Flow"))
    user = created.parsed
    assert created.status_code == 201, created.content
    assert isinstance(user, UserRead)
    assert (user.email, user.fname, user.lname, user.is_superuser) == (email, "Flow", "", False)
    assert created.headers["Location"] == f"/api/users/{user.id}"
    again = signup.sync_detailed(client=public, body=UserCreate(email=email, password=PASSWORD))
    assert again.status_code == 409
    _error(again.parsed, "Email already registered.")

    # Login: a wrong password, the right one, a refresh; a used refresh token is refused.
    wrong = login.sync_detailed(client=public, body=PasswordGrant(username=email, password="not it"))
    assert (wrong.status_code, wrong.headers["WWW-Authenticate"]) == (401, "Bearer")
    _error(wrong.parsed, "Incorrect email or password")
    first = _token(public, email, PASSWORD)
    refreshed = login.sync(
        client=public, body=RefreshGrant(grant_type="refresh_token", refresh_token=first.refresh_token)
    )
    assert isinstance(refreshed, Token), refreshed
    replayed = login.sync_detailed(
        client=public, body=RefreshGrant(grant_type="refresh_token", refresh_token=first.refresh_token)
    )
    assert replayed.status_code == 400
    assert isinstance(replayed.parsed, ErrorMessage)
    # The replay ended that login: its newest access token is refused too (docs: Security, "Tokens and logins").
    with _as(base_url, refreshed) as client:
        assert me.sync_detailed(client=client).status_code == 401
    current = _token(public, email, PASSWORD)
    with _as(base_url, current) as client:
        myself = me.sync(client=client)
        assert isinstance(myself, UserRead)
        assert myself.id == user.id
        _todos(client, email, user)
        _password(client)
    with AuthenticatedClient(base_url=base_url, token="not-a-jwt") as stranger:
        assert me.sync_detailed(client=stranger).status_code == 401
    token = _token(public, email, NEW_PASSWORD)
    with _as(base_url, token) as client:
        _logout(public, client, token)


def _todos(client: AuthenticatedClient, email: str, user: UserRead) -> None:

    # Todos: create, list, read with If-None-Match, replace and change with If-Match, delete.
    made = create_todo.sync_detailed(client=client, body=TodoCreate(text="write the flow"))
    todo = made.parsed
    assert made.status_code == 201
    assert isinstance(todo, TodoRead)
    assert (todo.text, todo.completed, todo.owner_id) == ("write the flow", False, user.id)
    tag = made.headers["ETag"]
    invalid = create_todo.sync_detailed(client=client, body=TodoCreate(text=""))
    assert invalid.status_code == 422
    assert isinstance(invalid.parsed, ValidationErrorBody)
    assert [(issue.type_, issue.loc) for issue in invalid.parsed.detail] == [("string_too_short", ["body", "text"])]

    listed = list_todos.sync_detailed(client=client, limit=5, count=True)
    assert isinstance(listed.parsed, list)
    assert [item.id for item in listed.parsed] == [todo.id]
    assert listed.headers["X-Total-Count"] == "1"

    read = get_todo.sync_detailed(todo.id, client=client)
    assert isinstance(read.parsed, TodoReadNested)
    assert read.parsed.owner.email == email
    assert read.headers["ETag"] == tag
    not_modified = get_todo.sync_detailed(todo.id, client=client, if_none_match=tag)
    assert (not_modified.status_code, not_modified.parsed, not_modified.content) == (304, None, b"")

    replaced = replace_todo.sync_detailed(
        todo.id, client=client, body=TodoReplace(text="flow written", completed=True), if_match=tag
    )
    assert isinstance(replaced.parsed, TodoRead)
    assert (replaced.parsed.text, replaced.parsed.completed) == ("flow written", True)
    stale = update_todo.sync_detailed(todo.id, client=client, body=TodoPatch(completed=False), if_match=tag)
    assert stale.status_code == 412
    assert isinstance(stale.parsed, ErrorMessage)
    current = replaced.headers["ETag"]
    patched = update_todo.sync(todo.id, client=client, body=TodoPatch(completed=False), if_match=current)
    assert isinstance(patched, TodoRead)
    assert (patched.text, patched.completed) == ("flow written", False)
    deleted = delete_todo.sync_detailed(todo.id, client=client)
    assert (deleted.status_code, deleted.parsed) == (204, None)
    gone = get_todo.sync_detailed(todo.id, client=client)
    assert gone.status_code == 404
    _error(gone.parsed, "Todo not found")


def _password(client: AuthenticatedClient) -> None:
    # Change the password: the wrong current one, then the right one; older tokens stop working.
    refused = change_password.sync_detailed(
        client=client, body=PasswordChange(current_password="not it", new_password=NEW_PASSWORD)
    )
    assert refused.status_code == 403
    _error(refused.parsed, "Current password is incorrect")
    changed = change_password.sync_detailed(
        client=client, body=PasswordChange(current_password=PASSWORD, new_password=NEW_PASSWORD)
    )
    assert (changed.status_code, changed.parsed) == (204, None)
    assert me.sync_detailed(client=client).status_code == 401


def _logout(public: Client, client: AuthenticatedClient, token: Token) -> None:
    """Log out: the refresh token is revoked."""
    out = logout.sync_detailed(client=client, body=Logout(refresh_token=token.refresh_token))
    assert out.status_code == 204
    revoked = login.sync_detailed(
        client=public, body=RefreshGrant(grant_type="refresh_token", refresh_token=token.refresh_token)
    )
    assert revoked.status_code == 400


if __name__ == "__main__":
    run(*sys.argv[1:3])
    print("python flow: ok")
