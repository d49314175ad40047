#!/usr/bin/env bash
# Creates one role and one database per service, on the first start only (empty data directory): the official
# image runs /docker-entrypoint-initdb.d/*.sh once, as the superuser, before it accepts connections.
#
# Each service's SQLAlchemy URL comes from the Secret `maillage-database` as <SERVICE>_DATABASE_URL, e.g.
# postgresql+psycopg://catalog:<password>@postgres:5432/catalog: the role, password and database are read from
# it, so the password is written once. KEYCLOAK_DB_PASSWORD, when set, creates the `keycloak` role and database.
# A service added later needs its role and database created by hand (see infra/k8s/README.md).
set -euo pipefail

create() {
  local role="$1" password="$2" database="$3"
  echo "init-databases: role and database ${role}/${database}"
  # psql variables quote the values (:"ident", :'literal'): nothing read from the Secret is spliced into SQL.
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v role="$role" -v password="$password" -v database="$database" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role" ENCODING 'UTF8';
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
}

for variable in $(compgen -v | grep -E '^[A-Z]+_DATABASE_URL$' || true); do
  url="${!variable}"
  rest="${url#*://}"            # role:password@host:port/database?options
  credentials="${rest%%@*}"     # role:password
  role="${credentials%%:*}"
  password="${credentials#*:}"
  database="${rest##*/}"
  database="${database%%\?*}"
  if [[ -z "$role" || -z "$password" || "$password" == "$credentials" || -z "$database" ]]; then
    echo "init-databases: $variable is not of the form postgresql+psycopg://role:password@host:port/database" >&2
    exit 1
  fi
  create "$role" "$password" "$database"
done

if [[ -n "${KEYCLOAK_DB_PASSWORD:-}" ]]; then
  create keycloak "$KEYCLOAK_DB_PASSWORD" keycloak
fi
