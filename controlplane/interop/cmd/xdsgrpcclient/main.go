// Command xdsgrpcclient is an independent xDS client for the interop test:
// grpc-go's own xDS implementation (google.golang.org/grpc/xds), configured
// by the bootstrap file in GRPC_XDS_BOOTSTRAP, resolves -target through the
// petmesh control plane and calls grpc.health.v1.Health/Check in a loop.
// Each call prints one JSON line: {"server":"<server-id trailer>"} or
// {"error":"..."}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "xdsgrpcclient:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("xdsgrpcclient", flag.ContinueOnError)
	target := fs.String("target", "", "xds:///<service>")
	interval := fs.Duration("interval", 10*time.Millisecond, "pause between calls")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return fmt.Errorf("-target: required")
	}
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", *target, err)
	}
	defer func() { _ = conn.Close() }()
	hc := healthpb.NewHealthClient(conn)
	enc := json.NewEncoder(os.Stdout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var tr metadata.MD
		_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.Trailer(&tr), grpc.WaitForReady(true))
		cancel()
		line := map[string]string{}
		if err != nil {
			line["error"] = err.Error()
		} else if v := tr.Get("server-id"); len(v) > 0 {
			line["server"] = v[0]
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}
