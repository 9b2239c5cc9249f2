// Command petfinder-standin serves Petfinder API v2 fixtures for local
// development and tests. See dev/petfinder-standin/README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	standin "github.com/petmesh/petmesh/dev/petfinder-standin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := standin.Run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "petfinder-standin:", err)
		os.Exit(1)
	}
}
