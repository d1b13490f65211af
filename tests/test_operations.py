"""operations.Call: mypy checks the arguments a handler gives a data function."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each line that mypy must refuse says which error it expects (code: a pattern of the message);
# every other line must pass.
_HANDLER = """
from asgi_todo.api.todos import create_todo, find_todo
from asgi_todo.api.users import create_user
from asgi_todo.operations import AnyCall
from asgi_todo.schemas import TodoCreate, UserCreate


async def handler(call: AnyCall, data: TodoCreate, user: UserCreate) -> None:
    await call.read_as_user(find_todo, todo_id=1)
    await call.write_as_user(create_todo, data=data)
    await call.write(create_user, data=user, hashed_password="x")
    await call.read_as_user(find_todo, todo=1)  # call-arg: Unexpected keyword argument "todo"
    await call.read_as_user(find_todo, todo_id="1")  # arg-type: "todo_id" .* "str"; expected "int"
    await call.read_as_user(find_todo, 1)  # call-arg: Too many positional arguments
    await call.write_as_user(create_todo)  # call-arg: Missing named argument "data"
    await call.write(create_user, data=data, hashed_password="x")  # arg-type: "TodoCreate"; expected "UserCreate"
    await call.write(find_todo, todo_id=1)  # call-arg: Too few arguments
    text: str = await call.read_as_user(find_todo, todo_id=1)  # arg-type: -> str"
"""


@pytest.mark.process
def test_mypy_checks_the_arguments_of_a_data_function(tmp_path: Path) -> None:
    """A wrong keyword, type or count, a function that needs the caller run without one, or
    its result used as the wrong type: each is a mypy error at the line that does it."""
    handler = tmp_path / "call_arguments.py"
    handler.write_text(_HANDLER)
    expected = {
        number: comment.groups()
        for number, line in enumerate(_HANDLER.splitlines(), start=1)
        if (comment := re.search(r"  # ([a-z-]+): (.+)$", line))
    }
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "setup.cfg", "--no-error-summary", str(handler)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = re.findall(r"^.*call_arguments\.py:(\d+): error: (.*)  \[([a-z-]+)\]$", done.stdout, re.MULTILINE)
    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(int(line) for line, _, _ in errors) == sorted(expected), done.stdout
    for line, message, code in errors:
        expected_code, pattern = expected[int(line)]
        assert code == expected_code, (line, message)
        assert re.search(pattern, message), (line, message)
