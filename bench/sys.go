package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// LoadAvg is the machine's 1, 5 and 15-minute load averages (Linux).
func LoadAvg() [3]float64 {
	var la [3]float64
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return la
	}
	f := strings.Fields(string(raw))
	for i := 0; i < 3 && i < len(f); i++ {
		la[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return la
}

// CPUModel is the first "model name" of /proc/cpuinfo and the number of
// online processors.
func CPUModel() (string, int) {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown", 0
	}
	model, n := "unknown", 0
	for line := range strings.SplitSeq(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "processor":
			n++
		case "model name":
			if model == "unknown" {
				model = strings.TrimSpace(v)
			}
		}
	}
	return model, n
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times on Linux.
const clockTick = 10 * time.Millisecond

// treeCPU is the CPU time (user + system) used so far by pid and every
// live descendant (nginx and HAProxy workers, for instance).
func treeCPU(pid int) time.Duration {
	children := map[int][]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	cpu := map[int]time.Duration{}
	for _, p := range stats {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		id, ppid, t, ok := parseStat(string(raw))
		if !ok {
			continue
		}
		children[ppid] = append(children[ppid], id)
		cpu[id] = t
	}
	var total time.Duration
	var walk func(int)
	walk = func(p int) {
		total += cpu[p]
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return total
}

// parseStat reads pid, ppid and utime+stime from a /proc/<pid>/stat line.
func parseStat(s string) (pid, ppid int, cpu time.Duration, ok bool) {
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, 0, 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:strings.IndexByte(s, '(')]))
	if err != nil {
		return 0, 0, 0, false
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 13 {
		return 0, 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return pid, ppid, time.Duration(ut+st) * clockTick, true
}

// treeRSS is the summed VmRSS of pid and its live descendants, in bytes.
func treeRSS(pid int) int64 {
	var total int64
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	parent := map[int]int{}
	for _, p := range stats {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		id, ppid, _, ok := parseStat(string(raw))
		if ok {
			parent[id] = ppid
		}
	}
	for id := range parent {
		for p := id; p > 1; p = parent[p] {
			if p == pid {
				total += vmRSS(id)
				break
			}
		}
	}
	return total
}

func vmRSS(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}
