package metadata

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const keyFileSize = 32

// LoadOrCreateKey reads a 32-byte key file, or creates one (crypto/rand, mode 0600) if absent.
//
// A new key is written to a temporary file and linked into place, so a crash never leaves a short key behind and two
// agents racing on the same path end up with the same key. An existing key readable by group or others is refused:
// whoever reads it can mint IMDSv2 tokens for any pod IP.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := createKey(path); err != nil {
		return nil, err
	}
	return readKey(path)
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read token key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read token key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("token key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("token key %s has mode %04o, want 0600: chmod 600 it or delete it to create a new one", path, perm)
	}
	if fi.Size() != keyFileSize {
		return nil, fmt.Errorf("token key %s has %d bytes, want %d: delete it to create a new one", path, fi.Size(), keyFileSize)
	}
	key := make([]byte, keyFileSize)
	if _, err := f.ReadAt(key, 0); err != nil {
		return nil, fmt.Errorf("read token key: %w", err)
	}
	return key, nil
}

func createKey(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create token key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".token-key-*")
	if err != nil {
		return fmt.Errorf("create token key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp already uses 0600; say so rather than rely on it.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("create token key: %w", err)
	}
	key := make([]byte, keyFileSize)
	rand.Read(key)
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return fmt.Errorf("create token key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("create token key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("create token key: %w", err)
	}
	// Link fails if another process got there first; its key then wins and readKey returns it.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create token key: %w", err)
	}
	// Best effort: make the new name durable, or a crash could cost held tokens their key.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
