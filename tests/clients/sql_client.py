"""Runs SQL against vigil with a real Python client and prints the results as JSON,
for the Rust end-to-end tests to check.

Usage: python3 sql_client.py psycopg|adbc URI < queries.json
queries.json is a list of {"sql": "...", "args": [...]}; the output is a JSON list with,
per query, {"columns": [...], "types": [...], "rows": [[...]]} or {"error": {...}}.
psycopg binds args as Postgres parameters (%s); ADBC binds them as Flight SQL
prepared statement parameters (?/$1), and reports Arrow types.
"""
import datetime
import decimal
import json
import sys


def plain(v):
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return v.isoformat() + "Z"
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def run_psycopg(uri, queries):
    import psycopg

    out = []
    with psycopg.connect(uri, autocommit=True) as conn:
        for q in queries:
            try:
                with conn.cursor() as cur:
                    cur.execute(q["sql"], q.get("args") or None)
                    cols = [d.name for d in cur.description]
                    types = [d.type_code for d in cur.description]
                    rows = [[plain(v) for v in r] for r in cur.fetchall()]
                    out.append({"columns": cols, "types": types, "rows": rows})
            except psycopg.Error as e:
                out.append({"error": {"code": e.sqlstate, "message": str(e)}})
    return out


def run_adbc(uri, queries):
    import adbc_driver_flightsql.dbapi as flight_sql
    import adbc_driver_manager

    out = []
    with flight_sql.connect(uri) as conn:
        for q in queries:
            try:
                with conn.cursor() as cur:
                    args = q.get("args")
                    cur.execute(q["sql"], args if args else None)
                    table = cur.fetch_arrow_table()
                    out.append(
                        {
                            "columns": table.column_names,
                            "types": [str(f.type) for f in table.schema],
                            "rows": [[plain(v) for v in r.values()] for r in table.to_pylist()],
                            "batches": len(table.to_batches()),
                        }
                    )
            except adbc_driver_manager.Error as e:
                out.append({"error": {"code": type(e).__name__, "message": str(e)}})
    return out


def main():
    driver, uri = sys.argv[1], sys.argv[2]
    queries = json.load(sys.stdin)
    runner = {"psycopg": run_psycopg, "adbc": run_adbc}[driver]
    print(json.dumps(runner(uri, queries)))


if __name__ == "__main__":
    main()
