// Command petctl is the command-line client of the petmesh control plane.
// Exit codes: 0 ok, 1 usage, 2 validation rejected, 3 version conflict,
// 4 authentication/authorisation, 5 unreachable or other failure.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/petmesh/petmesh/controlplane/petctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := petctl.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
