package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestBootTime(t *testing.T) {
	got, err := bootTime("/proc/stat")
	if err != nil {
		t.Fatalf("bootTime(/proc/stat) error = %v", err)
	}
	if now := time.Now(); !got.Before(now) || got.Before(now.AddDate(-10, 0, 0)) {
		t.Errorf("bootTime(/proc/stat) = %v, want a time in the last ten years", got)
	}

	dir := t.TempDir()
	for _, c := range []struct {
		name, stat string
		want       time.Time
		wantErr    bool
	}{
		{"btime", "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1764482400\nprocesses 7\n", time.Unix(1764482400, 0), false},
		{"no btime", "cpu  1 2 3\nprocesses 7\n", time.Time{}, true},
		{"bad btime", "btime soon\n", time.Time{}, true},
		{"zero btime", "btime 0\n", time.Time{}, true},
	} {
		f := filepath.Join(dir, c.name)
		if err := os.WriteFile(f, []byte(c.stat), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := bootTime(f)
		if (err != nil) != c.wantErr || !got.Equal(c.want) {
			t.Errorf("%s: bootTime() = %v, %v; want %v, error %v", c.name, got, err, c.want, c.wantErr)
		}
	}
	if _, err := bootTime(filepath.Join(dir, "missing")); err == nil {
		t.Error("bootTime(missing file) error = nil, want one")
	}
}
