// Command edge runs the petmesh edge server; "edge hash-password" prints a
// bcrypt hash for the users file.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/petmesh/petmesh/edge"
	"github.com/petmesh/petmesh/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if len(os.Args) > 1 && os.Args[1] == "hash-password" {
		err = edge.HashPasswordCommand(os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
	} else {
		err = edge.Run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	}
	stop()
	if err != nil && !errors.Is(err, config.ErrHelp) {
		fmt.Fprintln(os.Stderr, "edge:", err)
		os.Exit(1)
	}
}
