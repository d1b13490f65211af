#! /usr/bin/env sh
# The entry point, in the container and anywhere else (with the package installed):
#   ./start.sh [OPTION...]  gunicorn with uvicorn workers, configured from the environment
#                           (gunicorn options given here are added to that configuration)
#   ./start.sh --reload     development: one uvicorn process that restarts on code changes
#                           (DEV=1 does the same)
# Before either, the prestart script runs in this shell, if there is one: PRE_START_PATH, or
# ./prestart.sh when it exists. With UPDATE_DB=1 the gunicorn master upgrades the schema
# (`asgi-todo db upgrade`) once, before its workers start; without it, a database behind or
# ahead of the code stops the start with one line.
# gunicorn and asgi-todo come from PATH, else from the virtual environment .venv beside this
# script (the README's install), so that it also runs from a clone without activating it.
set -e

if ! command -v gunicorn >/dev/null 2>&1; then
    here=$(cd "${0%/*}" && pwd)
    if [ -x "$here/.venv/bin/gunicorn" ]; then
        PATH="$here/.venv/bin:$PATH"
        export PATH
    else
        echo "asgi-todo: gunicorn not found: install the package into $here/.venv (README, Run it), or activate the virtual environment it is in" >&2
        exit 127
    fi
fi

if [ -n "${PRE_START_PATH:-}" ] && [ ! -f "$PRE_START_PATH" ]; then
    echo "asgi-todo: PRE_START_PATH: no file $PRE_START_PATH" >&2
    exit 1
fi
prestart="${PRE_START_PATH:-./prestart.sh}"
if [ -f "$prestart" ]; then
    echo "start.sh: running $prestart" >&2
    # shellcheck disable=SC1090  # sourced, so that it can export variables for the server
    . "$prestart"
fi

if [ "${1:-}" = "--reload" ] || [ "${DEV:-0}" = "1" ]; then
    exec asgi-todo serve --reload
fi

# gunicorn reads WEB_CONCURRENCY itself when it starts, and answers a non-number, or an empty
# value, with a traceback before our configuration (settings.ServerSettings) can read it. Empty
# is unset, as for every setting; anything else but digits stops here, as our settings would.
if [ -z "${WEB_CONCURRENCY:-}" ]; then
    unset WEB_CONCURRENCY
fi
case "${WEB_CONCURRENCY:-1}" in
    *[!0-9]*)
        echo "asgi-todo: WEB_CONCURRENCY: '${WEB_CONCURRENCY}' is not a whole number" >&2
        exit 2
        ;;
esac

exec gunicorn -c python:asgi_todo.gunicorn_conf "$@" 'asgi_todo.app:create_app()'
