#!/bin/sh
# Entry point of the local stand-in for the `postgres:15` image (tests/containers.py builds
# it from Debian's PostgreSQL 15). Like the official image: on an empty PGDATA it creates the
# cluster with POSTGRES_USER (default postgres) as superuser, password POSTGRES_PASSWORD
# (required), and the database POSTGRES_DB (default: the user's name), and runs the scripts in
# /docker-entrypoint-initdb.d (`*.sh` executed, or sourced when not executable; `*.sql` through
# psql) against it; then it runs the server as the postgres user, listening on every address
# with password authentication.
set -eu

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
data="${PGDATA:-/var/lib/postgresql/data}"
bin=/usr/lib/postgresql/15/bin

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 0700 "$data"

if [ ! -s "$data/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    chown postgres "$password_file"
    as_postgres "$bin/initdb" -D "$data" --username="$user" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
    # A server on the socket only, for the database and the init scripts.
    as_postgres "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=''" -w start
    if [ "$database" != postgres ]; then
        as_postgres "$bin/createdb" --host=/run/postgresql --username="$user" "$database"
    fi
    export POSTGRES_USER="$user" POSTGRES_DB="$database" PGHOST=/run/postgresql
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
        *.sh) if [ -x "$script" ]; then "$script"; else . "$script"; fi ;;
        *.sql) psql -v ON_ERROR_STOP=1 --username="$user" --dbname="$database" -f "$script" ;;
        *) [ -e "$script" ] || continue ;;
        esac
    done
    as_postgres "$bin/pg_ctl" -D "$data" -m fast -w stop
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$data" -c listen_addresses='*' "$@"
