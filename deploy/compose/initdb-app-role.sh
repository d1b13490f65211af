#! /usr/bin/env sh
# Run once by the postgres image, as its superuser, when it creates the database (an empty
# volume): the role the app connects as, which is no superuser, and which owns the database,
# so that the tables `asgi-todo db upgrade` creates as that role are its own. The superuser
# does nothing else (docs/deployment.md: docker compose).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="$APP_DB_USER" -v password="$APP_DB_PASSWORD" -v database="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER DATABASE :"database" OWNER TO :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"role";
SQL
