package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// bootTime is when the node booted, from the kernel's btime in statFile (/proc/stat, which a container shares with
// its node). A pod whose sandbox became ready before then holds addresses from before the boot.
func bootTime(statFile string) (time.Time, error) {
	b, err := os.ReadFile(statFile)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the node's boot time: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("btime ")); ok {
			secs, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil || secs <= 0 {
				return time.Time{}, fmt.Errorf("reading the node's boot time: bad btime %q in %s", v, statFile)
			}
			return time.Unix(secs, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("reading the node's boot time: no btime in %s", statFile)
}
