package client

import (
	"os"
	"slices"
)

func slicesSort(s []string) { slices.Sort(s) }

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
