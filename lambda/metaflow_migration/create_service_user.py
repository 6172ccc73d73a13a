"""Creates or updates the metadata service's own PostgreSQL user, connected as the master user.

Not Lambda code: ``MetaflowMetadataService`` passes this file to ``python3 -c`` in a one-off
ECS task of the ``netflixoss/metaflow_metadata_service`` image, whose system Python has
psycopg2 (the service's migration requirements); ``database_user.py`` beside it starts that
task on deploy. It lives here, beside the code that runs it, and only uses psycopg2 and the
standard library.

Environment (the service's own settings plus two credential pairs, as ECS secrets):
``MF_METADATA_DB_HOST``, ``MF_METADATA_DB_PORT``, ``MF_METADATA_DB_NAME``,
``MF_METADATA_DB_SSL_MODE``, ``MASTER_USER``, ``MASTER_PASSWORD``, ``SERVICE_USER``,
``SERVICE_PASSWORD``.

What it leaves, in one transaction and whatever was there before:
- the role SERVICE_USER with LOGIN and SERVICE_PASSWORD (created, or its password reset),
  sent as a SCRAM-SHA-256 verifier so the password itself never reaches the server or its
  logs; NOCREATEDB and NOCREATEROLE, and no role is granted to it;
- CONNECT on the metadata database and USAGE and CREATE on its public schema;
- ownership of every table, view and sequence of the public schema that the master user
  owns (a database created before this user existed), so the service's schema migrations
  (goose: ALTER TABLE, CREATE INDEX) keep working under the new user. Sequences that belong
  to a table column follow their table.

Exits 0 on success; otherwise 1 with one line on stderr naming the problem.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Callable
from typing import Any

# Quoted by hand below, so only plain lower-case identifiers are accepted.
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCRAM_ITERATIONS = 4096
# Relations of the public schema the master user owns, except sequences owned by a column
# (deptype 'a': serial; 'i': identity), which move with their table.
MASTER_OWNED_RELATIONS = """
SELECT c.relkind, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
  AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
  )
ORDER BY c.relname
"""
ALTER_KEYWORD = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
}


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    # SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    parts = (f"{iterations}:{b64(salt)}", f"{b64(stored_key)}:{b64(server_key)}")
    return "$".join(("SCRAM-SHA-256", *parts))


def _identifier(value: str, what: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a plain lower-case identifier")
    return f'"{value}"'


def apply(cursor: Any, *, service_user: str, verifier: str, database: str) -> list[str]:
    """Runs the statements on `cursor` (connected as the master user); returns the relations
    whose ownership moved to the service user."""
    user = _identifier(service_user, "SERVICE_USER")
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (service_user,))
    verb = "ALTER" if cursor.fetchone() else "CREATE"
    cursor.execute(
        f"{verb} ROLE {user} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD %s", (verifier,)
    )
    cursor.execute(f"GRANT CONNECT ON DATABASE {_identifier(database, 'database')} TO {user}")
    cursor.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {user}")
    cursor.execute(MASTER_OWNED_RELATIONS)
    relations = cursor.fetchall()
    if relations:
        # Giving an object away needs membership of the new owner (PostgreSQL 16 and later).
        cursor.execute(f"GRANT {user} TO CURRENT_USER")
    moved = []
    for kind, name in relations:
        cursor.execute(f'ALTER {ALTER_KEYWORD[kind]} public."{name}" OWNER TO {user}')
        moved.append(name)
    return moved


def main(connect: Callable[..., Any] | None = None) -> int:
    """Connects with the environment's master credentials and applies; the exit status."""
    env = os.environ
    try:
        if connect is None:
            import psycopg2

            connect = psycopg2.connect
        if env["SERVICE_USER"] == env["MASTER_USER"]:
            raise ValueError("SERVICE_USER must not be the master user")
        connection = connect(
            host=env["MF_METADATA_DB_HOST"],
            port=int(env["MF_METADATA_DB_PORT"]),
            dbname=env["MF_METADATA_DB_NAME"],
            user=env["MASTER_USER"],
            password=env["MASTER_PASSWORD"],
            sslmode=env["MF_METADATA_DB_SSL_MODE"],
            connect_timeout=30,
        )
        try:
            # psycopg2: the block is one transaction, committed on success.
            with connection, connection.cursor() as cursor:
                moved = apply(
                    cursor,
                    service_user=env["SERVICE_USER"],
                    verifier=scram_verifier(env["SERVICE_PASSWORD"], secrets.token_bytes(16)),
                    database=env["MF_METADATA_DB_NAME"],
                )
        finally:
            connection.close()
    # Any failure: one line in the task's log and exit status 1, which fails the deploy.
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"database user {env['SERVICE_USER']} ready; ownership moved: {moved or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
