// Command petmesh-healthcheck probes an HTTP URL for container health
// checks; see package healthcheck.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/petmesh/petmesh/deploy/healthcheck"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := healthcheck.Run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "petmesh-healthcheck:", err)
		os.Exit(1)
	}
}
