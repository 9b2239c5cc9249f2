//go:build !linux

package launcher

import "syscall"

// sysProcAttr puts each process in its own process group (Ctrl-C at the
// terminal reaches only the launcher, which stops them in order).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
