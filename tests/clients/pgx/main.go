// pgx-client runs SQL against vigil's Postgres front end with pgx v5, the driver
// Grafana's PostgreSQL datasource uses, and prints each result as JSON so that the
// Rust end-to-end tests can check the values.
//
// Usage: pgx-client [--count|--count-values] DSN < queries.json
// where queries.json is a list of {"sql": "...", "args": [...]}. Output: a JSON list
// with, per query, {"columns": [...], "types": [OIDs], "rows": [[...]]} or {"error": {...}}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

type query struct {
	SQL  string `json:"sql"`
	Args []any  `json:"args"`
}

type result struct {
	Columns []string `json:"columns,omitempty"`
	Types   []uint32 `json:"types,omitempty"`
	Rows    [][]any  `json:"rows,omitempty"`
	Error   *pgErr   `json:"error,omitempty"`
}

type pgErr struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func run(ctx context.Context, conn *pgx.Conn, q query) result {
	rows, err := conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return errResult(err)
	}
	defer rows.Close()
	var res result
	for _, f := range rows.FieldDescriptions() {
		res.Columns = append(res.Columns, f.Name)
		res.Types = append(res.Types, f.DataTypeOID)
	}
	res.Rows = [][]any{}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return errResult(err)
		}
		for i, v := range vals {
			if t, ok := v.(time.Time); ok {
				vals[i] = t.UTC().Format(time.RFC3339Nano)
			}
		}
		res.Rows = append(res.Rows, vals)
	}
	if err := rows.Err(); err != nil {
		return errResult(err)
	}
	return res
}

func errResult(err error) result {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return result{Error: &pgErr{Code: pe.Code, Message: pe.Message}}
	}
	return result{Error: &pgErr{Code: "", Message: err.Error()}}
}

// countRows runs one query and prints only the number of rows it returned, decoding
// every value (the streaming benchmark). Values are scanned into typed variables
// chosen from the result's column types, as Grafana's SQL data frames and most Go
// programs read them; with --values they go through rows.Values() instead (a new
// interface value per column per row).
func countRows(ctx context.Context, conn *pgx.Conn, q query, generic bool) {
	rows, err := conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fields := rows.FieldDescriptions()
	dest := make([]any, len(fields))
	for i, f := range fields {
		switch f.DataTypeOID {
		case pgtype.Int8OID:
			dest[i] = new(pgtype.Int8)
		case pgtype.Int4OID:
			dest[i] = new(pgtype.Int4)
		case pgtype.Float8OID:
			dest[i] = new(pgtype.Float8)
		case pgtype.TextOID, pgtype.VarcharOID:
			dest[i] = new(pgtype.Text)
		case pgtype.TimestamptzOID:
			dest[i] = new(pgtype.Timestamptz)
		default:
			dest[i] = new(any)
		}
	}
	n := 0
	for rows.Next() {
		if generic {
			_, err = rows.Values()
		} else {
			err = rows.Scan(dest...)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(n)
}

func main() {
	count := len(os.Args) == 3 && (os.Args[1] == "--count" || os.Args[1] == "--count-values")
	generic := count && os.Args[1] == "--count-values"
	if count {
		os.Args = append(os.Args[:1], os.Args[2:]...)
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pgx-client [--count|--count-values] DSN < queries.json")
		os.Exit(2)
	}
	var queries []query
	if err := json.NewDecoder(os.Stdin).Decode(&queries); err != nil {
		fmt.Fprintln(os.Stderr, "reading queries:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, os.Args[1])
	if err != nil {
		out, _ := json.Marshal(map[string]any{"connect_error": err.Error()})
		fmt.Println(string(out))
		os.Exit(1)
	}
	defer conn.Close(ctx)
	if count {
		countRows(ctx, conn, queries[0], generic)
		return
	}
	results := make([]result, 0, len(queries))
	for _, q := range queries {
		results = append(results, run(ctx, conn, q))
	}
	out, err := json.Marshal(results)
	if err != nil {
		fmt.Fprintln(os.Stderr, "encoding results:", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
