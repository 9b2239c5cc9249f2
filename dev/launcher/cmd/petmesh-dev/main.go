// Command petmesh-dev runs the whole petmesh topology on one machine for
// development: `make run` (foreground) and `make start`/`make stop`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/petmesh/petmesh/dev/launcher"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := launcher.Run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "petmesh-dev:", err)
		os.Exit(1)
	}
}
