#!/usr/bin/env python3
"""Runs the same client queries against vigil and a real PostgreSQL and reports
both answers, for the end-to-end test that checks vigil answers as Postgres does.

Input (JSON on stdin):
  {"vigil": dsn, "postgres": dsn,
   "queries": [{"name", "sql", "args"?, "unordered"?, "columns"?, "except_rows"?}],
   "psql": [{"name", "command", "drop"?}],       # psql meta-commands (\\dt ...)
   "types": ["text", ...]}                          # psycopg's TypeInfo.fetch
First the PostgreSQL database is made to hold vigil's tables: every schema, table
and column vigil lists in information_schema, and the rows of its `public` tables.

Output (JSON on stdout): a list of {"name", "vigil", "postgres"}, each answer being
{"columns": [...], "rows": [[...]]} or {"error": "..."}; values are normalised
(numbers as floats, times as ISO strings) so that equal answers compare equal.
"""
import datetime
import decimal
import json
import subprocess
import sys

import psycopg
from psycopg.types import TypeInfo


def norm(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, decimal.Decimal)):
        return float(v)
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc)
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    return str(v)


def run(conn, q):
    try:
        with conn.cursor() as cur:
            cur.execute(q["sql"], q.get("args") or None)
            columns = [d.name for d in cur.description] if cur.description else []
            rows = [[norm(v) for v in r] for r in cur.fetchall()] if cur.description else []
        keep = q.get("columns")
        if keep:
            idx = [columns.index(c) for c in keep if c in columns]
            columns = [columns[i] for i in idx]
            rows = [[r[i] for i in idx] for r in rows]
        skip = [r for r in q.get("except_rows", [])]
        rows = [r for r in rows if r[: len(skip[0])] not in skip] if skip else rows
        if q.get("unordered"):
            rows.sort(key=lambda r: json.dumps(r))
        return {"columns": columns, "rows": rows}
    except Exception as e:  # noqa: BLE001 - the error is the answer
        return {"error": f"{type(e).__name__}: {e}".strip()}


def psql(dsn, command, drop):
    out = subprocess.run(
        ["psql", dsn, "-X", "-A", "-F", "\t", "-P", "footer=off", "-c", command],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()}
    lines = out.stdout.splitlines()
    # psql -A prints a title line ("List of relations", 'Table "public.cpu"') first.
    title, rest = (lines[0], lines[1:]) if lines and "\t" not in lines[0] else ("", lines)
    if not rest:
        return {"title": title, "columns": [], "rows": []}
    header = rest[0].split("\t")
    idx = [i for i, h in enumerate(header) if h not in drop]
    rows = [[r.split("\t")[i] for i in idx] for r in rest[1:] if r.strip()]
    return {"title": title, "columns": [header[i] for i in idx], "rows": rows}


def typeinfo(conn, name):
    try:
        t = TypeInfo.fetch(conn, name)
        if t is None:
            return {"rows": []}
        return {"rows": [[t.name, t.oid, t.array_oid, t.regtype, t.delimiter]]}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def mirror(vigil, pg):
    """Creates vigil's schemas and tables in Postgres, with the rows of public ones."""
    with vigil.cursor() as cur:
        cur.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'VIEW'"
        )
        views = set(cur.fetchall())
        cur.execute(
            "SELECT schema_name FROM information_schema.schemata "
            "WHERE schema_name NOT IN ('information_schema', 'pg_catalog')"
        )
        schemas = [r[0] for r in cur.fetchall()]
        cur.execute(
            "SELECT table_schema, table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns "
            "WHERE table_schema NOT IN ('information_schema', 'pg_catalog') "
            "ORDER BY table_schema, table_name, ordinal_position"
        )
        columns = cur.fetchall()
    tables = {}
    for schema, table, column, data_type, nullable in columns:
        tables.setdefault((schema, table), []).append((column, data_type, nullable))
    ident = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    with pg.cursor() as cur:
        for schema in schemas:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
        for (schema, table), cols in tables.items():
            if (schema, table) in views:
                select = ", ".join(f"NULL::{t} AS {ident(c)}" for c, t, _ in cols)
                cur.execute(f"CREATE VIEW {ident(schema)}.{ident(table)} AS SELECT {select}")
                continue
            defs = ", ".join(
                f"{ident(c)} {t}{' NOT NULL' if n == 'NO' else ''}" for c, t, n in cols
            )
            cur.execute(f"CREATE TABLE {ident(schema)}.{ident(table)} ({defs})")
            if schema != "public":
                continue
            with vigil.cursor() as vc:
                vc.execute(f"SELECT {', '.join(ident(c) for c, _, _ in cols)} FROM {ident(table)}")
                rows = vc.fetchall()
            if rows:
                marks = ", ".join(["%s"] * len(cols))
                cur.executemany(
                    f"INSERT INTO {ident(schema)}.{ident(table)} VALUES ({marks})", rows
                )
    pg.commit()


def main():
    spec = json.load(sys.stdin)
    vigil = psycopg.connect(spec["vigil"], autocommit=True)
    pg = psycopg.connect(spec["postgres"])
    mirror(vigil, pg)
    pg.autocommit = True
    out = []
    for q in spec.get("queries", []):
        out.append({"name": q["name"], "vigil": run(vigil, q), "postgres": run(pg, q)})
    for c in spec.get("psql", []):
        drop = set(c.get("drop", []))
        out.append({
            "name": c["name"],
            "vigil": psql(spec["vigil"], c["command"], drop),
            "postgres": psql(spec["postgres"], c["command"], drop),
        })
    for name in spec.get("types", []):
        out.append({
            "name": f"TypeInfo.fetch({name})",
            "vigil": typeinfo(vigil, name),
            "postgres": typeinfo(pg, name),
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
