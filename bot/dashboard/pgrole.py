"""The PostgreSQL read-only role for the SQL console in production.

`dreambot admin console-role-sql` prints this SQL; a database owner runs it once (and
again after migrations that add tables), then points `DREAMBOT_CONSOLE_DATABASE_URL` at
the role. The role can only SELECT, and cannot see secret columns at all: PostgreSQL
refuses them whatever the statement, so the console's parser check is no longer the
only thing between an admin and a password hash.
"""

from __future__ import annotations

from bot.dashboard.sqlguard import SECRET_COLUMNS, app_schema, is_secret_table


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def readonly_role_sql(role: str = "dreambot_console", schema: str = "public") -> str:
    """SQL that creates (or refreshes) a SELECT-only role with secret columns withheld."""
    r, s, literal = _ident(role), _ident(schema), role.replace("'", "''")
    lines = [
        "-- A read-only role for the dreambot SQL console. Run as the database owner.",
        "-- Set its password with: ALTER ROLE ... PASSWORD '...';",
        "DO $$ BEGIN",
        f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{literal}') THEN",
        f"    CREATE ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;",
        "  END IF;",
        "END $$;",
        f"ALTER ROLE {r} SET default_transaction_read_only = on;",
        f"ALTER ROLE {r} SET statement_timeout = '5s';",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r};",
        f"GRANT USAGE ON SCHEMA {s} TO {r};",
    ]
    secret_tables = {t for t, _ in SECRET_COLUMNS}
    for table, columns in sorted(app_schema().items()):
        if is_secret_table(table):
            continue
        target = f"{s}.{_ident(table)}"
        if table in secret_tables:
            visible = ", ".join(_ident(c) for c in columns if (table, c) not in SECRET_COLUMNS)
            lines.append(f"GRANT SELECT ({visible}) ON {target} TO {r};")
        else:
            lines.append(f"GRANT SELECT ON {target} TO {r};")
    return "\n".join(lines) + "\n"
