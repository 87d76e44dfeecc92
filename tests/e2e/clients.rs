//! The query front ends with the real clients analysts and Grafana use: psql,
//! psycopg and pgx over the Postgres wire protocol, ADBC and the JDBC driver over
//! Arrow Flight SQL. `scripts/install-clients.sh` installs them; a missing client
//! fails the test (it is never skipped).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::TestServer;

/// 2026-01-01T00:00:00Z in seconds.
const T0: i64 = 1_767_225_600;

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/clients")
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Hosts a and b, one point a minute for ten minutes: a's usage is 1.5 * i, b's is
/// 100 + i; `count` is i, `epoch_s` the time in seconds (for `$__unixEpochFilter`).
fn start_with_data(extra: &[&str]) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), extra);
    let mut lp = String::new();
    for i in 0..10i64 {
        let t = T0 + 60 * i;
        lp.push_str(&format!(
            "cpu,host=a,region=eu usage={},count={i}i,ok=true,msg=\"m{i}\",epoch_s={t}i {}\n",
            1.5 * i as f64,
            t * 1_000_000_000
        ));
        lp.push_str(&format!(
            "cpu,host=b,region=us usage={},count={i}i,ok=false,msg=\"m{i}\",epoch_s={t}i {}\n",
            100 + i,
            t * 1_000_000_000
        ));
    }
    server.write_lp(&lp);
    (dir, server)
}

fn run_json(mut cmd: Command, input: &Value) -> Vec<Value> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?} (run scripts/install-clients.sh): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str::<Vec<Value>>(stdout.trim())
        .unwrap_or_else(|e| panic!("bad client output ({e}): {stdout}"))
}

fn python(driver: &str, uri: &str, queries: &Value) -> Vec<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_dir().join("tests/clients/sql_client.py"))
        .arg(driver)
        .arg(uri);
    run_json(cmd, queries)
}

fn rows(result: &Value) -> &Vec<Value> {
    result["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {result}"))
}

/// The rows of a result whose values are all numbers, as f64 (clients print 3.0 as 3).
fn numbers(result: &Value) -> Vec<Vec<f64>> {
    rows(result)
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")))
                .collect()
        })
        .collect()
}

/// The stdout of a client that must have succeeded (its stderr is the failure message).
fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn psql(server: &TestServer, args: &[&str]) -> std::process::Output {
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", "postgres", "-d", "vigil", "-X", "-A", "-t",
        ])
        .args(["-F", ","])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql not found (run scripts/install-clients.sh)")
}

#[test]
fn psql_queries_describes_and_reports_errors() {
    let (_dir, server) = start_with_data(&[]);
    let out = psql(
        &server,
        &[
            "-c",
            "SELECT host, sum(usage), count(*) FROM cpu GROUP BY host ORDER BY host",
        ],
    );
    let text = succeeded(&out);
    // float8 text as PostgreSQL writes it: `1045`, not `1045.0`.
    assert_eq!(text.trim(), "a,67.5,10\nb,1045,10", "{text}");

    let out = psql(
        &server,
        &[
            "-c",
            "SET TIME ZONE 'UTC'",
            "-c",
            "SELECT time, usage FROM cpu WHERE host = 'b' ORDER BY time DESC LIMIT 1",
        ],
    );
    let text = succeeded(&out);
    assert!(
        text.trim_end().ends_with("\n2026-01-01 00:09:00+00,109"),
        "{text}"
    );

    let out = psql(&server, &["-c", "SELECT version()"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("PostgreSQL 16.0 (vigil"), "{text}");

    // psql's own catalog queries: \dt lists the table, \d describes its columns.
    let out = psql(&server, &["-c", "\\dt"]);
    let text = succeeded(&out);
    assert!(
        text.lines().any(|l| l.starts_with("public,cpu,table")),
        "{text}"
    );
    let out = psql(&server, &["-c", "\\d cpu"]);
    let text = succeeded(&out);
    for column in [
        "host,text",
        "usage,double precision",
        "count,bigint",
        "ok,boolean",
    ] {
        assert!(
            text.contains(column),
            "missing {column} in \\d cpu:\n{text}"
        );
    }
    assert!(text.contains("time,timestamp with time zone"), "{text}");

    // The functions Grafana's schema browser and query builder call.
    let out = psql(
        &server,
        &[
            "-c",
            "SELECT current_setting('search_path'), quote_ident('Weird Name'), \
             array_length(string_to_array('a,b,c', ','), 1), (parse_ident('public.cpu'))[2], \
             (SELECT sum(value) FROM generate_series(1, 4))",
        ],
    );
    let text = succeeded(&out);
    assert_eq!(
        text.trim(),
        "\"$user\", public,\"Weird Name\",3,cpu,10",
        "{text}"
    );

    // SET / SHOW round trip within one session.
    let out = psql(
        &server,
        &[
            "-c",
            "SET statement_timeout = '5s'",
            "-c",
            "SHOW statement_timeout",
        ],
    );
    let text = succeeded(&out);
    assert!(text.contains("5s") || text.contains("5000"), "{text}");

    // A SQL error reaches psql as an ERROR with DataFusion's message and a SQLSTATE.
    let out = psql(
        &server,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "SELECT no_such_column FROM cpu",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ERROR:") && err.contains("no_such_column"),
        "{err}"
    );
    assert!(
        err.split_whitespace().any(|w| w.len() == 6
            && w.ends_with(':')
            && w[..5].chars().all(|c| c.is_ascii_alphanumeric())),
        "no SQLSTATE in: {err}"
    );
}

#[test]
fn psycopg_types_parameters_and_errors() {
    let (_dir, server) = start_with_data(&[]);
    let uri = format!(
        "host={} port={} user=postgres dbname=vigil",
        server.pg_addr.split(':').next().unwrap(),
        server.pg_addr.split(':').nth(1).unwrap()
    );
    let results = python(
        "psycopg",
        &uri,
        &json!([
            {"sql": "SELECT host, usage, count, ok, msg, time FROM cpu WHERE host = 'a' ORDER BY time LIMIT 2"},
            {"sql": "SELECT host, usage FROM cpu WHERE host = %s AND usage > %s ORDER BY time", "args": ["b", 105.5]},
            {"sql": "SELECT count(*) AS n FROM cpu WHERE time >= %s AND count < %s", "args": ["2026-01-01T00:05:00Z", 8]},
            {"sql": "SELECT no_such_column FROM cpu"},
        ]),
    );
    let r = &results[0];
    // float8, int8, bool, text, timestamptz
    assert_eq!(r["types"], json!([25, 701, 20, 16, 25, 1184]), "{r}");
    assert_eq!(
        rows(r)[1],
        json!(["a", 1.5, 1, true, "m1", "2026-01-01T00:01:00Z"]),
        "{r}"
    );
    assert_eq!(
        rows(&results[1]),
        &vec![
            json!(["b", 106.0]),
            json!(["b", 107.0]),
            json!(["b", 108.0]),
            json!(["b", 109.0])
        ],
        "{}",
        results[1]
    );
    // Minutes 5, 6 and 7 for both hosts.
    assert_eq!(rows(&results[2]), &vec![json!([6])], "{}", results[2]);
    let e = &results[3]["error"];
    assert!(
        e["message"].as_str().unwrap().contains("no_such_column"),
        "{e}"
    );
    assert_eq!(e["code"].as_str().map(str::len), Some(5), "SQLSTATE: {e}");
}

/// The SQL Grafana's PostgreSQL datasource sends (through pgx v5), after macro
/// expansion, and the schema browser's queries.
#[test]
fn pgx_runs_grafana_queries() {
    let (_dir, server) = start_with_data(&[]);
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let dsn = format!("postgres://postgres@{host}:{port}/vigil?sslmode=disable");
    let from = "2026-01-01T00:00:00Z";
    let to = "2026-01-01T00:09:59Z";
    let queries = json!([
        // $__timeGroupAlias(time,'5m') + $__timeFilter(time)
        {"sql": format!("SELECT floor(extract(epoch from time)/300)*300 AS \"time\", avg(usage) AS \"usage\" FROM cpu WHERE time BETWEEN '{from}' AND '{to}' AND host = 'a' GROUP BY 1 ORDER BY 1")},
        // $__timeGroup(time,'5m') in TimescaleDB mode
        {"sql": format!("SELECT time_bucket('300s',time) AS \"time\", max(usage) AS \"max\" FROM cpu WHERE time BETWEEN '{from}' AND '{to}' AND host = 'a' GROUP BY 1 ORDER BY 1")},
        // $__unixEpochFilter(epoch_s)
        {"sql": format!("SELECT count(*) FROM cpu WHERE epoch_s >= {T0} AND epoch_s <= {}", T0 + 240)},
        // A parameterised query, as pgx sends it (extended protocol, binary results).
        {"sql": "SELECT host, count, time FROM cpu WHERE host = $1 AND count = $2", "args": ["b", 3]},
        // Schema browser: tables, then the columns of the chosen table.
        {"sql": GRAFANA_TABLES},
        {"sql": GRAFANA_COLUMNS.replace("TABLE", "public.cpu")},
        {"sql": "SELECT no_such_column FROM cpu"},
        // `?` placeholders, numbered by vigil.
        {"sql": "SELECT count(*) FROM cpu WHERE host = ? AND count > ?", "args": ["b", 4]},
    ]);
    let mut cmd = Command::new(clients_dir().join("pgx-client"));
    cmd.arg(&dsn);
    let results = run_json(cmd, &queries);
    assert_eq!(
        numbers(&results[0]),
        vec![vec![T0 as f64, 3.0], vec![(T0 + 300) as f64, 10.5]],
        "{}",
        results[0]
    );
    let buckets: Vec<(&str, f64)> = rows(&results[1])
        .iter()
        .map(|r| (r[0].as_str().unwrap(), r[1].as_f64().unwrap()))
        .collect();
    assert_eq!(
        buckets,
        vec![
            ("2026-01-01T00:00:00Z", 6.0),
            ("2026-01-01T00:05:00Z", 13.5)
        ],
        "{}",
        results[1]
    );
    // timestamptz is OID 1184, float8 701.
    assert_eq!(results[1]["types"], json!([1184, 701]), "{}", results[1]);
    assert_eq!(rows(&results[2]), &vec![json!([10])], "{}", results[2]);
    assert_eq!(
        rows(&results[3]),
        &vec![json!(["b", 3, "2026-01-01T00:03:00Z"])],
        "{}",
        results[3]
    );
    let tables: Vec<&str> = rows(&results[4])
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    // As Postgres answers: public is on the search path, so "cpu", not "public.cpu".
    assert!(tables.contains(&"cpu"), "{}", results[4]);
    assert!(!tables.contains(&"public.cpu"), "{}", results[4]);
    let columns: Vec<(&str, &str)> = rows(&results[5])
        .iter()
        .map(|r| (r[0].as_str().unwrap(), r[1].as_str().unwrap()))
        .collect();
    // Quoted as Postgres's quote_ident quotes them: `time` is a keyword.
    for name in ["host", "region", "usage", "count", "\"time\""] {
        assert!(columns.iter().any(|(c, _)| *c == name), "{columns:?}");
    }
    assert!(
        columns.contains(&("\"time\"", "timestamp with time zone")),
        "{columns:?}"
    );
    let e = &results[6]["error"];
    assert!(
        e["message"].as_str().unwrap().contains("no_such_column"),
        "{e}"
    );
    assert_eq!(e["code"].as_str().map(str::len), Some(5), "{e}");
    assert_eq!(rows(&results[7]), &vec![json!([5])], "{}", results[7]);
}

const GRAFANA_SCHEMAS: &str = r#"SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"#;

/// Grafana's `buildSchemaConstraint()`: is the table's schema on the search path?
const GRAFANA_SEARCH_PATH: &str = r#"
          quote_ident('public') IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"#;

const GRAFANA_TABLES: &str = r#"SELECT
    CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          ) THEN 0 ELSE 1 END, 1"#;

const GRAFANA_COLUMNS: &str = r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('TABLE'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('TABLE'))[1]
          AND quote_ident(table_name) = (parse_ident('TABLE'))[2]
        ELSE quote_ident(table_name) = 'TABLE'
          AND
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      END"#;

/// A real PostgreSQL server (scripts/postgres.sh) for as long as it lives.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    fn start() -> Self {
        // Postgres runs as its own system user under root: its directory must be
        // reachable by it.
        let dir = tempfile::Builder::new()
            .prefix("vigil-pg")
            .tempdir_in("/tmp")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = crate::server::free_port();
        let out = Command::new("bash")
            .arg(repo_dir().join("scripts/postgres.sh"))
            .arg("start")
            .arg(dir.path().join("pg"))
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port }
    }

    fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=postgres user=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_dir().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

/// Grafana's PostgreSQL datasource (its query builder's catalog queries from
/// grafana/grafana `postgresMetaQuery.ts`, Grafana 11, and its macros from
/// `macros.go` expanded), psql's `\dt`, `\dn` and `\d`, DBeaver's navigator and
/// psycopg's type lookup, each sent to vigil and to a real PostgreSQL holding the
/// same tables and rows: the answers must be the same.
#[test]
fn catalog_and_grafana_queries_answer_as_postgresql_does() {
    let config_dir = tempfile::tempdir().unwrap();
    // No rollup tables appearing halfway through the comparison.
    let config = config_dir.path().join("vigil.toml");
    std::fs::write(&config, "[rollups]\nenabled = false\n").unwrap();
    let (_dir, server) = start_with_data(&["--config", config.to_str().unwrap()]);
    let mut lp = String::new();
    for i in 0..5i64 {
        lp.push_str(&format!(
            "diskIO,host=a reads={i}i {}\n",
            (T0 + 60 * i) * 1_000_000_000
        ));
    }
    server.write_lp(&lp);
    let postgres = Postgres::start();
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let vigil = format!("host={host} port={port} dbname=vigil user=postgres");
    let from = "2026-01-01T00:00:00Z";
    let to = "2026-01-01T00:09:59Z";
    let search_path = GRAFANA_SEARCH_PATH;
    let spec = json!({
        "vigil": vigil,
        "postgres": postgres.dsn(),
        "queries": [
            {"name": "timescaledb version", "sql": "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"},
            {"name": "schemas", "sql": GRAFANA_SCHEMAS},
            {"name": "tables", "sql": GRAFANA_TABLES},
            {"name": "tables of public", "sql": "SELECT quote_ident(table_name) AS \"table\"\n      FROM information_schema.tables\n      WHERE quote_ident(table_schema) = 'public'\n      ORDER BY 1"},
            {"name": "columns of cpu", "sql": GRAFANA_COLUMNS.replace("TABLE", "cpu"), "unordered": true},
            {"name": "columns of public.cpu", "sql": GRAFANA_COLUMNS.replace("TABLE", "public.cpu"), "unordered": true},
            {"name": "columns of \"diskIO\"", "sql": GRAFANA_COLUMNS.replace("TABLE", "\"diskIO\""), "unordered": true},
            {"name": "$__timeGroupAlias + $__timeFilter", "sql": format!("SELECT floor(extract(epoch from \"time\")/300)*300 AS \"time\", avg(usage) AS \"usage\" FROM cpu WHERE \"time\" BETWEEN '{from}' AND '{to}' GROUP BY 1 ORDER BY 1")},
            {"name": "$__time, a series per host", "sql": format!("SELECT \"time\" AS \"time\", host AS metric, usage FROM cpu WHERE \"time\" BETWEEN '{from}' AND '{to}' ORDER BY 1, 2")},
            {"name": "$__timeEpoch", "sql": format!("SELECT extract(epoch from time) as \"time\", count FROM cpu WHERE host = 'a' AND time BETWEEN '{from}' AND '{to}' ORDER BY 1")},
            {"name": "builder: max per minute", "sql": format!("SELECT floor(extract(epoch from \"time\")/60)*60 AS \"time\", max(usage) AS \"usage\", count(msg) FROM cpu WHERE \"time\" BETWEEN '{from}' AND '{to}' GROUP BY 1 ORDER BY 1 LIMIT 50")},
            {"name": "$__unixEpochFilter", "sql": format!("SELECT count(*) FROM cpu WHERE epoch_s >= {T0} AND epoch_s <= {}", T0 + 240)},
            {"name": "variable: hosts", "sql": "SELECT DISTINCT host FROM cpu ORDER BY 1"},
            {"name": "variable: __text/__value", "sql": "SELECT DISTINCT host AS __text, region AS __value FROM cpu ORDER BY 1"},
            {"name": "variable: filtered", "sql": "SELECT DISTINCT host FROM cpu WHERE region IN ('eu', 'us') AND host <> 'b' ORDER BY host"},
            {"name": "unnamed result columns", "sql": "SELECT count(*), max(usage), min(time), 1, host, CASE WHEN host = 'a' THEN 1 ELSE 2 END, count(msg) FROM cpu GROUP BY host ORDER BY host"},
            {"name": "quote_ident", "sql": "SELECT quote_ident('cpu'), quote_ident('time'), quote_ident('diskIO'), quote_ident('a\"b'), quote_ident('value'), quote_ident('user')"},
            {"name": "parse_ident", "sql": "SELECT parse_ident('public.cpu'), parse_ident('\"diskIO\"'), array_length(parse_ident('a.b'),1)"},
            {"name": "the search path test alone", "sql": format!("SELECT 1 AS one WHERE {search_path}"), "unordered": true},
            {"name": "DBeaver: schemas", "sql": "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n left outer join pg_catalog.pg_description d on d.objoid=n.oid and d.objsubid=0 and d.classoid='pg_namespace'::regclass ORDER BY nspname", "columns": ["nspname"], "except_rows": [["information_schema"], ["pg_toast"]]},
            {"name": "DBeaver: tables", "sql": "select c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr,  pg_catalog.pg_get_partkeydef(c.oid) as partition_key from pg_catalog.pg_class c left outer join pg_catalog.pg_description d on d.objoid=c.oid and d.objsubid=0 and d.classoid='pg_class'::regclass where c.relnamespace=(select oid from pg_catalog.pg_namespace where nspname='public') and c.relkind not in ('i','I','c')", "columns": ["relname", "relkind"], "unordered": true},
            {"name": "DBeaver: columns", "sql": "select c.relname,a.*,pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) as def_value,dsc.description,dep.objid from pg_catalog.pg_attribute a inner join pg_catalog.pg_class c on (a.attrelid=c.oid) left outer join pg_catalog.pg_attrdef ad on (a.attrelid=ad.adrelid and a.attnum = ad.adnum) left outer join pg_catalog.pg_description dsc on (c.oid=dsc.objoid and a.attnum = dsc.objsubid) left outer join pg_depend dep on dep.refobjid = a.attrelid AND dep.deptype = 'i' and dep.refobjsubid = a.attnum and dep.classid = dep.refclassid where a.attnum > 0 and not a.attisdropped and c.oid=(select c.oid from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relname = 'cpu') order by a.attnum", "columns": ["relname", "attname", "attnum", "attnotnull"]},
        ],
        "psql": [
            {"name": "\\dt", "command": "\\dt", "drop": ["Owner"]},
            {"name": "\\dn", "command": "\\dn", "drop": ["Owner"]},
            {"name": "\\d cpu", "command": "\\d cpu"},
            {"name": "\\d \"diskIO\"", "command": "\\d \"diskIO\""},
        ],
        "types": ["text", "float8", "int8", "timestamptz", "bool", "numeric", "double precision"],
    });
    let mut cmd = Command::new("python3");
    cmd.arg(repo_dir().join("tests/clients/compare_pg.py"));
    let results = run_json(cmd, &spec);
    assert_eq!(results.len(), 22 + 4 + 7, "every query answered");
    let differences: Vec<String> = results
        .iter()
        .filter(|r| r["vigil"] != r["postgres"])
        .map(|r| {
            format!(
                "{}:\n  vigil:    {}\n  postgres: {}",
                r["name"], r["vigil"], r["postgres"]
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "vigil answers differently from PostgreSQL:\n{}",
        differences.join("\n")
    );
    // And the answers are the ones Grafana needs (not two equal errors).
    let by_name = |name: &str| {
        results
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["vigil"].clone())
            .unwrap()
    };
    assert!(
        results.iter().all(|r| r["vigil"].get("error").is_none()),
        "{results:?}"
    );
    assert_eq!(
        rows(&by_name("tables of public")),
        &vec![json!(["\"diskIO\""]), json!(["cpu"])]
    );
    let tables = by_name("tables");
    assert_eq!(
        rows(&tables)[..2],
        [json!(["\"diskIO\""]), json!(["cpu"])],
        "{tables}"
    );
    let columns = by_name("columns of cpu");
    assert!(
        rows(&columns).contains(&json!(["\"time\"", "timestamp with time zone"])),
        "{columns}"
    );
    assert!(
        rows(&columns).contains(&json!(["usage", "double precision"])),
        "{columns}"
    );
    assert_eq!(
        by_name("unnamed result columns")["columns"],
        json!(["count", "max", "min", "?column?", "host", "case", "count"])
    );

    // Internal columns stay internal, also where a scan deduplicates (a rewritten
    // point repeats a series and time in the buffer).
    server.write_lp(&format!(
        "cpu,host=a,region=eu usage=7.5 {}\n",
        T0 * 1_000_000_000
    ));
    for sql in [
        "SELECT * FROM cpu WHERE host = 'a' ORDER BY time LIMIT 1",
        "SELECT nosuch FROM cpu",
        "SELECT __seq FROM cpu",
        "SELECT __row_number FROM cpu",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'cpu'",
    ] {
        let out = psql(&server, &["-P", "tuples_only=off", "-c", sql]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The error may repeat the name asked for, never offer one.
        let offered = text
            .replace("No field named __seq", "")
            .replace("No field named __row_number", "");
        assert!(!offered.contains("__"), "{sql}: {text}");
        if sql.starts_with("SELECT *") {
            assert!(
                text.starts_with("host,region,count,epoch_s,msg,ok,usage,time\n")
                    || text
                        .lines()
                        .next()
                        .is_some_and(|h| h.split(',').count() == 8),
                "{text}"
            );
            assert!(text.contains(",7.5,"), "the rewritten value: {text}");
        }
    }
}

/// A Grafana query as its PostgreSQL datasource sends it: template variables
/// replaced, then the macros of `macros.go` expanded (the subset the dashboard
/// uses), over [from, to].
fn expand_grafana_macros(sql: &str, from: &str, to: &str, vars: &[(&str, &str)]) -> String {
    let mut sql = sql.replace("$__interval", "'60s'");
    for (name, value) in vars {
        sql = sql.replace(&format!("${name}"), value);
    }
    let seconds = |arg: &str| -> u64 {
        let a = arg.trim().trim_matches('\'');
        let (n, unit) = a.split_at(a.len() - 1);
        let n: u64 = n.parse().expect("interval");
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            other => panic!("unit {other}"),
        }
    };
    while let Some(at) = sql.find("$__") {
        let open = at + sql[at..].find('(').expect("macro arguments");
        let close = open + sql[open..].find(')').expect("macro end");
        let name = &sql[at + 3..open];
        let args: Vec<&str> = sql[open + 1..close].split(',').map(str::trim).collect();
        let expanded = match name {
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            "time" => format!("{} AS \"time\"", args[0]),
            "timeGroupAlias" => {
                let s = seconds(args[1]);
                format!("floor(extract(epoch from {})/{s})*{s} AS \"time\"", args[0])
            }
            "timeGroup" => {
                let s = seconds(args[1]);
                format!("floor(extract(epoch from {})/{s})*{s}", args[0])
            }
            other => panic!("macro {other} is not expanded by this test"),
        };
        sql.replace_range(at..=close, &expanded);
    }
    sql
}

/// Every query of the dashboard in deploy/grafana (panels and variables) runs
/// through pgx, the driver of Grafana's PostgreSQL datasource, and returns rows.
#[test]
fn grafana_dashboard_queries_run() {
    let (_dir, server) = start_with_data(&[]);
    let mut lp = String::new();
    for i in 0..10i64 {
        let t = (T0 + 60 * i) * 1_000_000_000;
        for (h, base) in [("host_0", 10.0), ("host_1", 50.0)] {
            lp.push_str(&format!(
                "cpu,hostname={h},region=eu-west-1 usage_user={},usage_system={},usage_iowait={} {t}\n",
                base + i as f64,
                base / 2.0 + i as f64,
                i as f64 / 10.0
            ));
        }
        for metric in [
            "vigil_rows_written_total",
            "vigil_buffer_rows",
            "vigil_queries_running",
            "vigil_parquet_files",
        ] {
            lp.push_str(&format!(
                "{metric},job=vigil,instance=127.0.0.1:8181 value={} {t}\n",
                100 * i
            ));
        }
    }
    server.write_lp(&lp);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_dir().join("deploy/grafana/dashboards/vigil.json")).unwrap(),
    )
    .unwrap();
    let mut sqls: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["rawSql"].as_str().unwrap().to_string())
        .collect();
    sqls.extend(
        dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["query"].as_str().unwrap().to_string()),
    );
    assert!(sqls.len() >= 8, "{sqls:?}");
    let queries: Vec<Value> = sqls
        .iter()
        .map(|q| {
            json!({"sql": expand_grafana_macros(
                q,
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:09:59Z",
                &[("hostname", "'host_0','host_1'")],
            )})
        })
        .collect();
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let mut cmd = Command::new(clients_dir().join("pgx-client"));
    cmd.arg(format!(
        "postgres://postgres@{host}:{port}/vigil?sslmode=disable"
    ));
    let results = run_json(cmd, &json!(queries));
    for (q, r) in queries.iter().zip(&results) {
        assert!(r.get("error").is_none(), "{}: {r}", q["sql"]);
        assert!(!rows(r).is_empty(), "{}: no rows", q["sql"]);
    }
    // The per-host panel has one series per host, by the Grafana `metric` column.
    let per_host = results
        .iter()
        .zip(&sqls)
        .find(|(_, q)| q.contains("AS metric"))
        .map(|(r, _)| r)
        .unwrap();
    let hosts: std::collections::BTreeSet<&str> = rows(per_host)
        .iter()
        .map(|r| r[1].as_str().unwrap())
        .collect();
    assert_eq!(hosts.into_iter().collect::<Vec<_>>(), ["host_0", "host_1"]);
}

#[test]
fn adbc_reads_arrow_with_parameters_and_streams() {
    let (_dir, server) = start_with_data(&[]);
    let uri = format!("grpc://{}", server.flight_addr);
    let results = python(
        "adbc",
        &uri,
        &json!([
            {"sql": "SELECT 1 AS one"},
            {"sql": "SELECT host, usage, count, ok, time FROM cpu WHERE host = 'a' ORDER BY time LIMIT 2"},
            {"sql": "SELECT count(*) AS n, sum(usage) AS s FROM cpu WHERE host = $1", "args": ["b"]},
            {"sql": "SELECT value FROM generate_series(1, 300000) ORDER BY value"},
            {"sql": "SELECT increase(count, time) AS inc FROM cpu WHERE host = 'a'"},
            {"sql": "SELECT no_such_column FROM cpu"},
            // qmark style, as ADBC's DB-API documents it.
            {"sql": "SELECT count(*) AS n FROM cpu WHERE host = ? AND count > ?", "args": ["b", 4]},
        ]),
    );
    assert_eq!(rows(&results[6]), &vec![json!([5])], "{}", results[6]);
    assert_eq!(rows(&results[0]), &vec![json!([1])]);
    let r = &results[1];
    assert_eq!(
        r["types"],
        json!(["string", "double", "int64", "bool", "timestamp[ns, tz=UTC]"]),
        "{r}"
    );
    assert_eq!(
        rows(r)[1],
        json!(["a", 1.5, 1, true, "2026-01-01T00:01:00Z"]),
        "{r}"
    );
    assert_eq!(
        rows(&results[2]),
        &vec![json!([10, 1045.0])],
        "{}",
        results[2]
    );
    let big = &results[3];
    let values = rows(big);
    assert_eq!(values.len(), 300_000);
    assert_eq!(values[299_999], json!([300_000]));
    assert!(
        big["batches"].as_u64().unwrap() > 1,
        "not streamed in batches: {}",
        big["batches"]
    );
    // The time-series functions are there too.
    assert_eq!(rows(&results[4]), &vec![json!([9.0])], "{}", results[4]);
    let e = &results[5]["error"];
    assert!(
        e["message"].as_str().unwrap().contains("no_such_column"),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("INVALID_ARGUMENT"),
        "{e}"
    );
}

#[test]
fn jdbc_queries_and_metadata() {
    let (_dir, server) = start_with_data(&["--auth-username", "ann", "--auth-password", "pw"]);
    let jar = clients_dir().join("flight-sql-jdbc-driver-18.3.0.jar");
    assert!(
        jar.exists(),
        "{} missing: run scripts/install-clients.sh",
        jar.display()
    );
    let classpath = format!("{}:{}", jar.display(), clients_dir().join("java").display());
    let url = format!(
        "jdbc:arrow-flight-sql://{}/?useEncryption=false",
        server.flight_addr
    );
    let run = |user: &str, password: &str, input: &str| {
        let mut child = Command::new("java")
            .arg("--add-opens=java.base/java.nio=ALL-UNNAMED")
            .arg("-cp")
            .arg(&classpath)
            .arg("JdbcClient")
            .args([url.as_str(), user, password])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("java");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        "ann",
        "pw",
        "SELECT host, sum(usage) AS s FROM cpu GROUP BY host ORDER BY host\n\
         ?SELECT count(*) AS n FROM cpu WHERE host = $1|a\n\
         ?SELECT count(*) AS q FROM cpu WHERE host = ? AND region = 'us'|b\n\
         SELECT no_such_column FROM cpu\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("COLS"))
        .expect("no result");
    assert_eq!(lines[at + 1], "ROW\ta\t67.5", "{text}");
    assert_eq!(lines[at + 2], "ROW\tb\t1045.0", "{text}");
    assert!(lines.contains(&"ROW\t10"), "prepared statement: {text}");
    // The `?` statement's result: its own column, 10 rows of b.
    let q = lines
        .iter()
        .position(|l| l.starts_with("COLS\tq:"))
        .unwrap_or_else(|| panic!("`?` prepared statement failed: {text}"));
    assert_eq!(lines[q + 1], "ROW\t10", "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ERROR") && l.contains("no_such_column")),
        "{text}"
    );
    assert!(
        lines.contains(&"TABLE\tvigil\tpublic\tcpu\tBASE TABLE"),
        "{text}"
    );
    assert!(lines.contains(&"SCHEMA\tpublic"), "{text}");
    assert!(lines.contains(&"CATALOG\tvigil"), "{text}");
    assert!(lines.contains(&"TABLETYPE\tBASE TABLE"), "{text}");
    assert!(lines.contains(&"TABLETYPE\tVIEW"), "{text}");
    for column in ["COLUMN\thost\t", "COLUMN\tusage\t", "COLUMN\ttime\t"] {
        assert!(
            lines.iter().any(|l| l.starts_with(column)),
            "{column}: {text}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("PRODUCT\tvigil")),
        "{text}"
    );

    // Wrong password: a clear authentication error, no data.
    let out = run("ann", "wrong", "SELECT 1\n");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("invalid credentials"), "{all}");
}

/// Auth on both front ends: psql with the right and wrong password, ADBC with a
/// bearer token and without.
#[test]
fn credentials_are_checked() {
    let (_dir, server) = start_with_data(&[
        "--auth-username",
        "ann",
        "--auth-password",
        "pw",
        "--auth-token",
        "tok3n",
    ]);
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let psql_as = |password: &str| {
        Command::new("psql")
            .args([
                "-h", host, "-p", port, "-U", "ann", "-d", "vigil", "-X", "-A", "-t",
            ])
            .args(["-c", "SELECT count(*) FROM cpu"])
            .env("PGPASSWORD", password)
            .output()
            .unwrap()
    };
    let ok = psql_as("pw");
    assert_eq!(succeeded(&ok).trim(), "20");
    let bad = psql_as("nope");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );

    let uri = format!("grpc://{}", server.flight_addr);
    let script = r#"
import sys, adbc_driver_flightsql.dbapi as f, adbc_driver_flightsql as fs, adbc_driver_manager
def count(kwargs):
    try:
        with f.connect(sys.argv[1], db_kwargs=kwargs) as c, c.cursor() as cur:
            cur.execute("SELECT count(*) FROM cpu")
            return str(cur.fetchone()[0])
    except adbc_driver_manager.Error as e:
        return "ERR " + str(e).replace("\n", " ")
print(count({fs.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer tok3n"}))
print(count({"username": "ann", "password": "pw"}))
print(count({}))
print(count({fs.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer wrong"}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &uri])
        .output()
        .unwrap();
    let text = succeeded(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "20", "{text}");
    assert_eq!(lines[1], "20", "{text}");
    assert!(
        lines[2].starts_with("ERR") && lines[2].contains("UNAUTHENTICATED"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("ERR") && lines[3].contains("invalid credentials"),
        "{text}"
    );
}

fn running_queries(server: &TestServer) -> i64 {
    server.metric("vigil_queries_running") as i64
}

/// A Flight client that stops reading and goes away frees its query; 1,000 idle
/// Postgres and Flight connections leave the server answering.
#[test]
fn abandoned_streams_are_freed_and_idle_connections_are_cheap() {
    let (_dir, server) = start_with_data(&[]);
    let script = r#"
import sys, adbc_driver_flightsql.dbapi as f
c = f.connect(sys.argv[1])
cur = c.cursor()
cur.execute("SELECT a.value * b.value AS v FROM generate_series(1, 100000) a, generate_series(1, 100000) b")
reader = cur.fetch_record_batch()
reader.read_next_batch()
print("READING", flush=True)
sys.stdin.readline()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &format!("grpc://{}", server.flight_addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READING");
    assert_eq!(
        running_queries(&server),
        1,
        "the streaming query should be running"
    );
    // The client exits without reading on or closing the statement.
    drop(child.stdin.take());
    child.kill().ok();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while running_queries(&server) != 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned query was not freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut idle = Vec::new();
    for i in 0..1000 {
        let addr = if i % 2 == 0 {
            &server.pg_addr
        } else {
            &server.flight_addr
        };
        idle.push(std::net::TcpStream::connect(addr).unwrap());
    }
    let out = psql(&server, &["-c", "SELECT count(*) FROM cpu"]);
    assert_eq!(succeeded(&out).trim(), "20");
    let r = python(
        "adbc",
        &format!("grpc://{}", server.flight_addr),
        &json!([{"sql": "SELECT count(*) FROM cpu"}]),
    );
    assert_eq!(rows(&r[0]), &vec![json!([20])]);
    drop(idle);
}

/// psycopg's `cancel()` (what psql's Ctrl-C sends) stops a long query with SQLSTATE
/// 57014, and the query timeout stops queries on both front ends.
#[test]
fn cancel_and_timeout_stop_long_queries() {
    // The cancel is sent after 0.5 s; with both cores busy running the query it can
    // take a few seconds to be read, so the timeout leaves it room.
    let (_dir, server) = start_with_data(&["--query-timeout", "6s"]);
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let long = "SELECT count(*) FROM generate_series(1, 200000) a, generate_series(1, 200000) b WHERE a.value + b.value = 7";
    let script = r#"
import sys, threading, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
def run():
    t = time.time()
    try:
        conn.execute(sys.argv[2]).fetchall()
        return "finished"
    except psycopg.Error as e:
        return "%s %.1f %s" % (e.sqlstate, time.time() - t, e)
threading.Timer(0.5, conn.cancel).start()
print(run())
print(run())
print(conn.execute("SELECT count(*) FROM cpu").fetchone()[0])
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &format!("host={host} port={port} user=postgres dbname=vigil"),
            long,
        ])
        .output()
        .unwrap();
    let text = succeeded(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("57014") && lines[0].contains("user request"),
        "cancel: {text}"
    );
    // (Without the cancel the query would have ended with the timeout error below;
    // how quickly a cancel lands depends on load, so it is not timed here.)
    assert!(
        lines[1].starts_with("57014") && lines[1].contains("timed out after 6s"),
        "timeout: {text}"
    );
    assert_eq!(lines[2], "20", "{text}");
    assert_eq!(running_queries(&server), 0);

    let r = python(
        "adbc",
        &format!("grpc://{}", server.flight_addr),
        &json!([{"sql": long}, {"sql": "SELECT count(*) FROM cpu"}]),
    );
    let e = r[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(e.contains("timed out after 6s"), "{}", r[0]);
    assert_eq!(rows(&r[1]), &vec![json!([20])]);
}

/// A careless extended-protocol client, message by message: a Bind with fewer
/// result formats than columns gets PostgreSQL's protocol error (it closed the
/// connection with a panic), named portals suspended by a row limit give their
/// queries back when their transaction ends, at Sync or COMMIT (they held them,
/// and their slots, until the connection closed), while a WITH HOLD cursor
/// outlives it and FETCH takes a format per column; a zoned timestamp reads in
/// text as PostgreSQL writes it.
#[test]
fn careless_extended_protocol_clients_get_errors_and_release_their_queries() {
    let (_dir, server) = start_with_data(&[]);
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let out = Command::new("python3")
        .arg(repo_dir().join("tests/clients/pg_extended.py"))
        .args([host, port, &format!("{}/metrics", server.url)])
        .output()
        .unwrap();
    let text = succeeded(&out);
    let seen: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        seen["short_formats"],
        json!([{"code": "08P01", "message": "bind message has 2 result formats but query has 3 columns"}]),
        "{seen}"
    );
    assert_eq!(seen["after_short_formats"], json!(["42"]), "{seen}");
    assert!(seen.get("suspend_error").is_none(), "{seen}");
    assert_eq!(seen["running_while_suspended"], json!(3.0), "{seen}");
    assert_eq!(seen["running_after_sync"], json!(0.0), "{seen}");
    assert_eq!(
        seen["closed_portal"].as_array().map(Vec::len),
        Some(1),
        "executing a portal closed at Sync is an error: {seen}"
    );
    assert_eq!(seen["declare_errors"], json!([]), "{seen}");
    assert_eq!(
        seen["held_cursor"],
        json!({"rows": 2, "errors": []}),
        "a WITH HOLD cursor outlives Sync: {seen}"
    );
    assert_eq!(seen["running_in_transaction"], json!(2.0), "{seen}");
    assert_eq!(seen["running_after_commit"], json!(0.0), "{seen}");
    assert_eq!(
        seen["fetch_with_formats"],
        json!({"rows": 2, "errors": []}),
        "{seen}"
    );
    // DataFusion reads `to_timestamp` as a timestamp without zone and AT TIME
    // ZONE as the local time there, shown in that zone: arrow-pg wrote `+05`.
    assert_eq!(
        seen["kolkata"],
        json!(["2023-11-14 22:13:20+05:30"]),
        "{seen}"
    );
    assert_eq!(running_queries(&server), 0);
}

/// With a certificate and key configured both front ends speak TLS only.
#[test]
fn tls_on_both_front_ends() {
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let (_dir, server) = start_with_data(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    let psql_ssl = |mode: &str| {
        Command::new("psql")
            .arg(format!(
                "host={host} port={port} user=postgres dbname=vigil sslmode={mode} sslrootcert={}",
                cert.display()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM cpu"])
            .output()
            .unwrap()
    };
    let out = psql_ssl("verify-full");
    assert_eq!(succeeded(&out).trim(), "20");
    // Without TLS the Postgres port refuses to log in: a password never crosses in
    // the clear.
    let out = psql_ssl("disable");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HTTP is https only: curl verifies the certificate, plain http gets nowhere.
    let health = Command::new("curl")
        .args(["-sS", "--cacert", cert.to_str().unwrap()])
        .arg(format!("{}/health", server.url))
        .output()
        .unwrap();
    assert_eq!(succeeded(&health).trim(), r#"{"status":"pass"}"#);
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{}/health", server.addr))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("pass"));

    let script = r#"
import sys, adbc_driver_flightsql.dbapi as f, adbc_driver_manager
def count(uri, kwargs):
    try:
        with f.connect(uri, db_kwargs=kwargs) as c, c.cursor() as cur:
            cur.execute("SELECT count(*) FROM cpu")
            return str(cur.fetchone()[0])
    except adbc_driver_manager.Error as e:
        return "ERR " + str(e).replace("\n", " ")
roots = open(sys.argv[2]).read()
print(count("grpc+tls://" + sys.argv[1], {"adbc.flight.sql.client_option.tls_root_certs": roots}))
print(count("grpc://" + sys.argv[1], {}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &server.flight_addr, cert.to_str().unwrap()])
        .output()
        .unwrap();
    let text = succeeded(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "20", "{text}");
    assert!(
        lines[1].starts_with("ERR"),
        "plaintext to a TLS server: {text}"
    );
}

/// The time-series functions against DuckDB and Python on the same seeded data:
/// irregular intervals, NULLs, counter resets, out-of-order writes, a gap, a
/// one-point series, an empty range, time zone literals (tests/clients/check_functions.py).
#[test]
fn time_series_functions_match_duckdb_and_python() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let out = Command::new("python3")
        .arg(repo_dir().join("tests/clients/check_functions.py"))
        .arg(&server.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ok: "), "{text}");
}
