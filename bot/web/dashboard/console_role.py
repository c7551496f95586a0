"""The SQL console's PostgreSQL role: made by `dreambot admin console-role`, checked at start.

On PostgreSQL the console's connection is the second layer behind the parser. A READ ONLY
transaction does not stop a superuser (replication slots, `pg_stat_reset()`, reading
files and settings), and the table owner can read every column. So `dreambot up` and
`dreambot dashboard` run the console only as a role that:
- is no superuser and cannot create roles, databases or replication connections;
- belongs to no predefined role that reads files, settings, statistics or all data;
- owns nothing in dreambot's schema and may not write to it (no INSERT/UPDATE/DELETE/
  TRUNCATE/REFERENCES/TRIGGER on a table, no sequence use, no CREATE in the schema or
  the database);
- may execute none of the server functions PostgreSQL keeps from ordinary roles.
Otherwise the console is off (one line says how to make the role) and the rest of the
dashboard works. `dreambot admin console-role` (run with the main, privileged URL)
creates or refreshes such a role with SELECT on the non-secret columns only, so even a
statement that got past the parser cannot read a password hash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from bot.web.dashboard.sqlallow import SECRET_COLUMNS, is_secret_table
from bot.web.dashboard.sqlguard import app_schema

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ROLE = "dreambot_console"
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
HOW_TO = (
    "create a read-only role with `dreambot admin console-role` and set DREAMBOT_CONSOLE_DATABASE_URL "
    "to the URL it prints (docs/dashboard.md)"
)
# Predefined roles that read the server's files, settings, statistics or all data.
ADMIN_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_stat_scan_tables",
    "pg_monitor",
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_checkpoint",
    "pg_database_owner",
)
_ATTRIBUTES = """SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
FROM pg_roles WHERE rolname = current_user"""
_MEMBERSHIPS = """SELECT r.rolname FROM pg_roles r
WHERE r.rolname = ANY(%(roles)s) AND pg_has_role(current_user, r.oid, 'USAGE')"""
_WRITABLE = """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND (
  pg_has_role(c.relowner, 'USAGE')
  OR (c.relkind IN ('r', 'p', 'v', 'm', 'f') AND (
      has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
      OR has_any_column_privilege(c.oid, 'INSERT, UPDATE, REFERENCES')))
  OR (c.relkind = 'S' AND has_sequence_privilege(c.oid, 'USAGE, UPDATE')))
ORDER BY 1"""
_CREATE = """SELECT coalesce(has_schema_privilege(%(schema)s, 'CREATE'), false)
  OR coalesce((SELECT pg_has_role(nspowner, 'USAGE') FROM pg_namespace WHERE nspname = %(schema)s), false),
  has_database_privilege(current_database(), 'CREATE')"""
# Server functions PostgreSQL grants to no one by default (pg_read_file, pg_stat_reset,
# pg_switch_wal, pg_hba_file_rules, lo_import, …): a role that may run one is an admin.
_ADMIN_FUNCTIONS = """SELECT DISTINCT p.proname FROM pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proacl IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)
  AND has_function_privilege(p.oid, 'EXECUTE')
ORDER BY 1"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def readonly_role_sql(role: str = DEFAULT_ROLE, schema: str = "public") -> str:
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
        "-- It belongs to no other role (pg_read_all_settings, pg_monitor, …).",
        "DO $$ DECLARE g text; BEGIN",
        "  FOR g IN SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid",
        f"           JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = '{literal}' LOOP",
        f"    EXECUTE format('REVOKE %I FROM %I', g, '{literal}');",
        "  END LOOP;",
        "END $$;",
        f"ALTER ROLE {r} SET default_transaction_read_only = on;",
        f"ALTER ROLE {r} SET statement_timeout = '5s';",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r};",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r};",
        f"REVOKE ALL ON SCHEMA {s} FROM {r};",
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


def _connect(url: str, **kwargs: Any) -> Any:
    import psycopg

    from bot.web.dashboard.sqlconsole import conninfo

    return psycopg.connect(conninfo(url), connect_timeout=5, **kwargs)


def create_console_role(settings: Settings, role: str, password: str) -> str:
    """Create or refresh `role` with the main database URL; return the console's URL."""
    from psycopg import sql

    if not ROLE_NAME.match(role):
        raise ValueError(
            "A role name is lower-case letters, digits and _ (at most 63), not starting with a digit."
        )
    schema = settings.database_schema or "public"
    main = settings.resolved_database_url
    with _connect(main, autocommit=True) as conn:
        conn.execute(readonly_role_sql(role, schema).encode())
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    return make_url(main).set(username=role, password=password).render_as_string(hide_password=False)


def role_problem(url: str, schema: str) -> str | None:
    """Why the console must not run as the role of `url`, or None when it may."""
    import psycopg

    try:
        with _connect(url) as conn:
            return _problem(conn, schema)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"could not check the console's database role ({first})"


def _problem(conn: Any, schema: str) -> str | None:
    who = conn.execute("SELECT current_user").fetchone()[0]
    attributes = conn.execute(_ATTRIBUTES).fetchone()
    names = ("a superuser", "allowed to create roles", "allowed to create databases", "a replication role",
             "allowed to bypass row security")  # fmt: skip
    for has, name in zip(attributes, names, strict=True):
        if has:
            return f'the database role "{who}" is {name}'
    if member := [r for (r,) in conn.execute(_MEMBERSHIPS, {"roles": list(ADMIN_ROLES)})]:
        return f'the database role "{who}" is a member of {", ".join(member)}'
    if writable := [t for (t,) in conn.execute(_WRITABLE, {"schema": schema})]:
        return f'the database role "{who}" owns or may write to {", ".join(writable[:5])}'
    in_schema, in_database = conn.execute(_CREATE, {"schema": schema}).fetchone()
    if in_schema or in_database:
        where = f"schema {schema}" if in_schema else "the database"
        return f'the database role "{who}" may create objects in {where}'
    if functions := [f for (f,) in conn.execute(_ADMIN_FUNCTIONS)]:
        return f'the database role "{who}" may run server functions such as {", ".join(functions[:3])}'
    return None


def console_off_reason(settings: Settings) -> str | None:
    """The one line to print when the console must stay off (PostgreSQL only)."""
    from bot.web.dashboard.sqlconsole import console_url

    url = console_url(settings)
    if url.startswith("sqlite"):
        return None
    problem = role_problem(url, settings.database_schema or "public")
    return f"SQL console off: {problem}; {HOW_TO}." if problem else None


def guard_console(app: Any, settings: Settings, say: Callable[[str], None] = log.warning) -> str | None:
    """At start-up: check the console's role; if it may not run, turn the console off and say so."""
    reason = console_off_reason(settings)
    app.state.dashboard.console_off = reason
    if reason:
        say(f"dreambot: {reason}")
    return reason
