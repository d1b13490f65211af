#! /usr/bin/env sh
# The entry point, in the container and anywhere else (with the package installed):
#   ./start.sh [OPTION...]  gunicorn with uvicorn workers, configured from the environment
#                           (gunicorn options given here are added to that configuration)
#   ./start.sh --reload     development: one uvicorn process that restarts on code changes
#                           (DEV=1 does the same)
# Before either, the prestart script runs in this shell, if there is one: PRE_START_PATH, or
# ./prestart.sh when it exists.
set -e

if [ -n "${PRE_START_PATH:-}" ] && [ ! -f "$PRE_START_PATH" ]; then
    echo "asgi_todo: PRE_START_PATH: no file $PRE_START_PATH" >&2
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

# gunicorn reads WEB_CONCURRENCY itself when it starts, and answers a non-number with a
# traceback before our configuration can name it.
case "${WEB_CONCURRENCY:-1}" in
    *[!0-9]*)
        echo "asgi_todo: WEB_CONCURRENCY: '${WEB_CONCURRENCY}' is not a whole number" >&2
        exit 1
        ;;
esac

exec gunicorn -c python:asgi_todo.gunicorn_conf "$@" 'asgi_todo.app:create_app()'
