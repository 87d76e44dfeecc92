// remotewrite sends Prometheus remote-write requests encoded by Prometheus's own
// prompb types and golang/snappy (what Prometheus itself sends), so vigil's decoder is
// checked against an encoder it does not share code with.
//
//	remotewrite URL METRICS SERIES SAMPLES START_MS
//
// sends METRICS metrics (rw_0..), each with SERIES series (label instance=i0..) of
// SAMPLES samples 15 s apart from START_MS; sample k of series s of metric m has the
// value m*1000 + s + k/4. One request per 100 samples of a series batch; prints the
// number of samples sent.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/prompb"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: remotewrite URL METRICS SERIES SAMPLES START_MS")
		os.Exit(2)
	}
	url := os.Args[1]
	num := func(i int) int {
		n, err := strconv.Atoi(os.Args[i])
		if err != nil {
			panic(err)
		}
		return n
	}
	metrics, series, samples := num(2), num(3), num(4)
	start, err := strconv.ParseInt(os.Args[5], 10, 64)
	if err != nil {
		panic(err)
	}
	sent := 0
	for k0 := 0; k0 < samples; k0 += 100 {
		var req prompb.WriteRequest
		for m := 0; m < metrics; m++ {
			for s := 0; s < series; s++ {
				ts := prompb.TimeSeries{Labels: []prompb.Label{
					{Name: "__name__", Value: fmt.Sprintf("rw_%d", m)},
					{Name: "instance", Value: fmt.Sprintf("i%d", s)},
					{Name: "job", Value: "remote write \"test\""},
				}}
				for k := k0; k < k0+100 && k < samples; k++ {
					ts.Samples = append(ts.Samples, prompb.Sample{
						Value:     float64(m*1000+s) + float64(k)/4,
						Timestamp: start + int64(k)*15000,
					})
				}
				sent += len(ts.Samples)
				req.Timeseries = append(req.Timeseries, ts)
			}
		}
		raw, err := req.Marshal()
		if err != nil {
			panic(err)
		}
		httpReq, _ := http.NewRequest("POST", url, bytes.NewReader(snappy.Encode(nil, raw)))
		httpReq.Header.Set("Content-Type", "application/x-protobuf")
		httpReq.Header.Set("Content-Encoding", "snappy")
		httpReq.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
		resp, err := http.DefaultClient.Do(httpReq)
		if err != nil {
			fmt.Fprintln(os.Stderr, "remote write failed:", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			fmt.Fprintf(os.Stderr, "remote write got %d: %s\n", resp.StatusCode, body)
			os.Exit(1)
		}
	}
	fmt.Println(sent)
}
