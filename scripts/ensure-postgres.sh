#!/usr/bin/env bash
# Make sure PostgreSQL server binaries are installed, for the throwaway clusters of the test suite
# (libs/kit/testing/postgres.py runs initdb + postgres itself, on a free port; it never uses a system cluster).
# Idempotent: when the binaries are there it prints one line and changes nothing.
set -euo pipefail

find_initdb() {
    # Newest major version first; `sort -V` orders 9.6 < 10 < 15 < 16 correctly.
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$found" ]] && command -v pg_config >/dev/null 2>&1; then
        local bindir
        bindir=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n "$bindir" && -x "$bindir/initdb" && -x "$bindir/postgres" ]]; then
            found="$bindir/initdb"
        fi
    fi
    printf '%s' "$found"
}

initdb=$(find_initdb)

if [[ -z "$initdb" ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        cat >&2 <<'EOF'
ensure-postgres: PostgreSQL server binaries (initdb, postgres) are not installed.
  On Debian/Ubuntu:  sudo apt-get install postgresql
  (any version >= 13 works; the tests start their own server on a free port, the system one is never used)
EOF
        exit 1
    fi
    echo "ensure-postgres: installing PostgreSQL from Debian's packages..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Recommends (sysstat, ...) are not needed to run initdb/postgres.
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # The package may create and try to start a "main" cluster on port 5432; where services cannot start (CI) that
    # fails harmlessly, and where it does start it is left alone: the test harness never touches port 5432.
    initdb=$(find_initdb)
    if [[ -z "$initdb" ]]; then
        echo "ensure-postgres: apt-get installed postgresql but no initdb was found under /usr/lib/postgresql" >&2
        exit 1
    fi
fi

# As root, the harness runs PostgreSQL as the `postgres` user (PostgreSQL refuses to run as root).
if [[ "$(id -u)" -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    echo "ensure-postgres: no 'postgres' system user; reinstall the package: apt-get install --reinstall postgresql-common" >&2
    exit 1
fi

echo "ensure-postgres: $("$initdb" --version) ($(dirname "$initdb"))"
