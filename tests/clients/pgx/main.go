// pgx-client runs SQL against vigil's Postgres front end with pgx v5, the driver
// Grafana's PostgreSQL datasource uses, and prints each result as JSON so that the
// Rust end-to-end tests can check the values.
//
// Usage: pgx-client DSN < queries.json
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
// every value (the streaming benchmark).
func countRows(ctx context.Context, conn *pgx.Conn, q query) {
	rows, err := conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n := 0
	for rows.Next() {
		if _, err := rows.Values(); err != nil {
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
	count := len(os.Args) == 3 && os.Args[1] == "--count"
	if count {
		os.Args = append(os.Args[:1], os.Args[2:]...)
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pgx-client [--count] DSN < queries.json")
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
		countRows(ctx, conn, queries[0])
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
