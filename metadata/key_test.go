package metadata

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "token.key")
	key, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatalf("LoadOrCreateKey(%q) creating: %v", p, err)
	}
	if len(key) != 32 || bytes.Equal(key, make([]byte, 32)) {
		t.Fatalf("LoadOrCreateKey(%q) = %x, want 32 random bytes", p, key)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	again, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(again, key) {
		t.Fatalf("LoadOrCreateKey(%q) reloading = %x, %v; want %x", p, again, err, key)
	}
	if entries, _ := os.ReadDir(filepath.Dir(p)); len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key (no temporary files left)", len(entries))
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token.key")
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadOrCreateKey(p)
			if err != nil {
				t.Errorf("LoadOrCreateKey #%d: %v", i, err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for i, k := range keys {
		if !bytes.Equal(k, keys[0]) {
			t.Errorf("LoadOrCreateKey #%d = %x, want the same key as #0 (%x)", i, k, keys[0])
		}
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		setup func(p string) error
	}{
		{"short", func(p string) error { return os.WriteFile(p, make([]byte, 16), 0o600) }},
		{"long", func(p string) error { return os.WriteFile(p, make([]byte, 33), 0o600) }},
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"world readable", func(p string) error {
			if err := os.WriteFile(p, make([]byte, 32), 0o600); err != nil {
				return err
			}
			return os.Chmod(p, 0o644)
		}},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name)
		if err := tt.setup(p); err != nil {
			t.Fatalf("%s: setup: %v", tt.name, err)
		}
		if key, err := LoadOrCreateKey(p); err == nil {
			t.Errorf("LoadOrCreateKey(%s) = %x, nil; want an error", tt.name, key)
		}
	}
}
