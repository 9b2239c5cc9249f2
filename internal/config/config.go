// Package config binds command-line flags and environment variables in one
// place (12-factor): every flag has an environment variable, the flag wins
// over the variable, and the variable wins over the default.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Flags is a flag set whose flags also read environment variables.
type Flags struct {
	fs     *flag.FlagSet
	getenv func(string) string
	errs   []error
}

// New returns an empty flag set for the named program. Usage and errors go
// to out.
func New(name string, getenv func(string) string, out io.Writer) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return &Flags{fs: fs, getenv: getenv}
}

// FlagSet exposes the underlying set.
func (f *Flags) FlagSet() *flag.FlagSet { return f.fs }

func (f *Flags) env(env string) (string, bool) {
	if env == "" || f.getenv == nil {
		return "", false
	}
	v := f.getenv(env)
	return v, v != ""
}

func usage(env, usage string) string {
	if env == "" {
		return usage
	}
	return fmt.Sprintf("%s (env %s)", usage, env)
}

// String defines a string flag.
func (f *Flags) String(p *string, name, env, def, help string) {
	if v, ok := f.env(env); ok {
		def = v
	}
	f.fs.StringVar(p, name, def, usage(env, help))
}

// Int defines an int flag.
func (f *Flags) Int(p *int, name, env string, def int, help string) {
	if v, ok := f.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s: want an integer, got %q", env, v))
		} else {
			def = n
		}
	}
	f.fs.IntVar(p, name, def, usage(env, help))
}

// Float64 defines a float flag.
func (f *Flags) Float64(p *float64, name, env string, def float64, help string) {
	if v, ok := f.env(env); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s: want a number, got %q", env, v))
		} else {
			def = n
		}
	}
	f.fs.Float64Var(p, name, def, usage(env, help))
}

// Bool defines a bool flag.
func (f *Flags) Bool(p *bool, name, env string, def bool, help string) {
	if v, ok := f.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s: want true or false, got %q", env, v))
		} else {
			def = b
		}
	}
	f.fs.BoolVar(p, name, def, usage(env, help))
}

// Duration defines a duration flag (Go syntax: 500ms, 24h).
func (f *Flags) Duration(p *time.Duration, name, env string, def time.Duration, help string) {
	if v, ok := f.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s: want a duration such as 30s, got %q", env, v))
		} else {
			def = d
		}
	}
	f.fs.DurationVar(p, name, def, usage(env, help))
}

// StringList defines a comma-separated list flag.
func (f *Flags) StringList(p *[]string, name, env, def, help string) {
	if v, ok := f.env(env); ok {
		def = v
	}
	*p = splitList(def)
	f.fs.Func(name, usage(env, help)+fmt.Sprintf(" (default %q)", def), func(s string) error {
		*p = splitList(s)
		return nil
	})
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// ErrHelp is returned by Parse when -h or -help was asked for.
var ErrHelp = flag.ErrHelp

// Parse parses args (without the program name). Bad environment values
// are reported together with flag errors.
func (f *Flags) Parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		return err
	}
	if f.fs.NArg() > 0 {
		f.errs = append(f.errs, fmt.Errorf("unexpected arguments: %q", f.fs.Args()))
	}
	return errors.Join(f.errs...)
}
