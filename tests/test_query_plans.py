"""The hot paths' query plans (docs: Benchmark, "Cost as the data grows"): no request reads every row of todos or users.

Each case runs the real data function on a database seeded like a busy one (3,000
users, 30,000 todos, ANALYZE'd), records the statements it sends, and asks the
database how it runs each: `EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN (FORMAT JSON)` on
PostgreSQL. A page may only walk an index in order and stop (no full scan, no sort, no
window over the matching set); a count must answer from an index. The only exception is
counting everything (the superuser's total with no filter), which by nature reads a whole
index: the docs state its cost (Benchmark, "Cost as the data grows").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from asgi_todo import security
from asgi_todo.api import todos, users
from asgi_todo.auth import Principal, current_user, find_principal
from asgi_todo.db import make_engine
from asgi_todo.models import Login, Todo, User
from asgi_todo.schemas import TodoCreate
from asgi_todo.startup import prepare

from .helpers import analyze, make_settings, postgres_database

USERS = 3000
TODOS = 30000
TABLES = ("todos", "users")
# Steps that gather every matching row before the first is sent (SQLite's, then PostgreSQL's):
# a page must not have one, but over the page of ids (api/todos.py: at most limit + 1 of them).
_GATHERS = ("TEMP B-TREE", "MATERIALIZE", "Sort", "WindowAgg", "Bitmap Heap Scan")
_BOUNDED = "MATERIALIZE page"  # SQLite's steps inside it start with it


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """One database per module: the demo data plus USERS users sharing TODOS todos (19 in 20
    completed, as old todos are; one in 50 is Alice's, the caller of most cases), ANALYZE'd.
    Every case rolls back what it wrote."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('plans')}/todo.db"
        else:
            admin = request.getfixturevalue("postgres_admin")
            url = stack.enter_context(postgres_database(admin, f"asgi_todo_plans_{uuid.uuid4().hex[:12]}"))
        engine = _seeded(url)
        stack.callback(engine.dispose)
        yield engine


def _seeded(url: str) -> sa.Engine:
    settings = make_settings(url)
    prepare(settings, start=f"plans-{uuid.uuid4().hex}", force=True)
    engine = make_engine(settings, pool_size=1)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(User),
            [
                {"email": f"plan{n}@example.com", "hashed_password": "x", "fname": "", "lname": "",
                 "is_superuser": False, "token_version": 0, "created_at": now, "updated_at": now}
                for n in range(USERS)
            ],
        )  # fmt: skip
        ids = connection.scalars(sa.select(User.id).order_by(User.id)).all()
        connection.execute(
            sa.insert(Todo),
            [
                {"text": f"todo {n}", "completed": n % 20 != 0, "owner_id": 2 if n % 50 == 0 else ids[n % len(ids)],
                 "created_at": now, "updated_at": now, "version": 1}
                for n in range(TODOS)
            ],
        )  # fmt: skip
        connection.execute(sa.insert(Login), {"id": "plans", "user_id": 2, "client": "test", "created_at": now})
    analyze(engine)
    return engine


Statement = tuple[str, Any]


def sent(engine: sa.Engine, work: Callable[[Session, Principal, Principal], object]) -> list[Statement]:
    """The statements `work` sends (as the driver gets them), in a transaction rolled back."""
    seen: list[Statement] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            seen.append((statement, parameters))

    with Session(engine) as session:
        alice = find_principal(session, 2)
        john = find_principal(session, 1)
        assert alice is not None
        assert john is not None
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            work(session, alice, john)
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
            session.rollback()
    assert seen
    return seen


def plan(engine: sa.Engine, statement: Statement) -> list[str]:
    """What the database does for the statement: a line per step (PostgreSQL: "<node> on
    <table> using <index>", and " filter <condition>" when it has one; SQLite: its own lines)."""
    sql, parameters = statement
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters).all()
            details = {row[0]: row[-1] for row in rows}
            # The outer query's steps, and the bounded page's, which SQLite nests under it.
            return [f"{details[row[1]]}: {row[-1]}" if row[1] in details else row[-1] for row in rows]
        (document,) = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters).scalar_one()
        steps: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            step = f"{node['Node Type']} on {node.get('Relation Name', '-')} using {node.get('Index Name', '-')}"
            steps.append(f"{step} filter {node['Filter']}" if "Filter" in node else step)
            for child in node.get("Plans", []):
                walk(child)

        walk(document["Plan"])
        return steps


def reads_everything(sql: str, steps: list[str]) -> list[str]:
    """The steps that read every row of todos or users; for a page, also those that gather
    every matching row before the first is sent; for a page or a count, those that read
    rows only to throw them away (a filter the index does not answer)."""
    count = sql.startswith("SELECT count(*)")
    many = count or " LIMIT " in sql
    bad = []
    for step in steps:
        detail = step.split(": ")[-1]  # SQLite: the step, without the page it is inside
        words = detail.split()
        table = step.split(" on ", 1)[1].split()[0] if " on " in step else None  # PostgreSQL's steps
        if words[0] == "SCAN" and words[1] in TABLES and not (count and "COVERING INDEX" in step):
            bad.append(step)  # SQLite: a table, or a whole index, in full
        elif step.startswith("Seq Scan") and table in TABLES:
            bad.append(step)  # PostgreSQL: a table in full
        elif not count and any(marker in detail for marker in _GATHERS) and not (_BOUNDED in steps and detail == step):
            bad.append(step)  # every matching row gathered, then sorted or windowed
        elif many and " filter " in step and table in TABLES:
            bad.append(step)  # PostgreSQL: rows read and thrown away
        elif many and words[:2] == ["SEARCH", "todos"] and "(rowid=?)" not in step:
            filters = [column for column in ("owner_id", "completed") if f"todos.{column} =" in sql]
            bad += [f"{step}: not by {column}" for column in filters if f"{column}=" not in step]  # SQLite, the same
    return bad


def _list(**filters: Any) -> Callable[[Session, Principal, Principal], object]:
    def work(session: Session, alice: Principal, john: Principal) -> object:
        shape = {"owner_id": None, "completed": None, "limit": 10, **filters}
        caller = john if shape.pop("superuser", False) else alice
        return todos.list_todos(session, caller, **shape)

    return work


def _me(session: Session, alice: Principal, john: Principal) -> object:
    claims = security.Claims(user_id=alice.id, issued_at=0, expires_at=0, version=0, login="plans")
    return current_user(session, claims)


def _write(session: Session, alice: Principal, john: Principal) -> object:
    todo = todos.create_todo(session, alice, data=TodoCreate(text="planned"))
    todos.update_todo(session, alice, todo_id=todo.id, changes={"completed": True}, if_match=None)
    tag = f'"{todo.id}.2"'
    todos.update_todo(session, alice, todo_id=todo.id, changes={"text": "again"}, if_match=tag)
    todos.delete_todo(session, alice, todo_id=todo.id, if_match=None)
    return None


def _users(**page: Any) -> Callable[[Session, Principal, Principal], object]:
    def work(session: Session, alice: Principal, john: Principal) -> object:
        return users.list_users(session, john, limit=10, **page)

    return work


MIDDLE = TODOS // 2  # a cursor deep into the table
CASES = [
    pytest.param(_list(), id="list-own"),
    pytest.param(_list(completed=False), id="list-own-completed"),
    pytest.param(_list(after_id=MIDDLE), id="list-own-after-id"),
    pytest.param(_list(completed=False, after_id=MIDDLE), id="list-own-completed-after-id"),
    pytest.param(_list(superuser=True), id="list-all"),
    pytest.param(_list(superuser=True, completed=False), id="list-all-completed"),
    pytest.param(_list(superuser=True, after_id=MIDDLE), id="list-all-after-id"),
    pytest.param(_list(superuser=True, owner_id=2), id="list-one-user"),
    pytest.param(_list(superuser=True, owner_id=2, completed=False), id="list-one-user-completed"),
    pytest.param(_list(count=True), id="count-own"),
    pytest.param(_list(completed=False, count=True), id="count-own-completed"),
    pytest.param(_list(superuser=True, completed=False, count=True), id="count-all-completed"),
    pytest.param(_list(superuser=True, count=True), id="count-all"),
    pytest.param(lambda session, alice, john: todos.find_todo(session, alice, todo_id=3), id="get-todo"),
    pytest.param(lambda session, alice, john: todos.find_todo(session, john, todo_id=5), id="get-todo-owner"),
    pytest.param(_me, id="caller"),
    pytest.param(_write, id="create-patch-delete"),
    pytest.param(_users(), id="users"),
    pytest.param(_users(after_id=MIDDLE // 10), id="users-after-id"),
    pytest.param(_users(count=True), id="users-count"),
]
# Counting every todo, or every user, reads a whole index (SQLite) or the table (PostgreSQL,
# whose planner prefers it for all rows): asked for only with count=true, its cost in the docs.
COUNTS_EVERYTHING = ("count-all", "users-count")


@pytest.mark.parametrize("work", CASES)
def test_a_hot_path_reads_only_what_it_answers(
    engine: sa.Engine, work: Callable[..., object], request: pytest.FixtureRequest
) -> None:
    case = request.node.callspec.id.split("-", 1)[1]
    for statement in sent(engine, work):
        if statement[0].startswith("SELECT count(*)") and case in COUNTS_EVERYTHING:
            continue
        steps = plan(engine, statement)
        assert not reads_everything(statement[0], steps), (statement[0], steps)
