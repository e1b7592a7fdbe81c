package podnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CNIFile is the conflist kube-routerd keeps at one path.
type CNIFile struct {
	Path string
}

// CNIState says what the file at the path is, after a sync.
type CNIState string

// The states of the conflist.
const (
	CNIWritten  CNIState = "written"  // ours and up to date
	CNIWaiting  CNIState = "waiting"  // nothing to write yet (no pod CIDR)
	CNIForeign  CNIState = "foreign"  // someone else's file is there; left alone
	CNIDisabled CNIState = "disabled" // write_cni_config is off
)

// Sync makes the file hold want. It writes only when the content differs, atomically
// (a runtime reading the directory sees the old or the new file, never a part), and
// never over a file that is not ours. It reports whether it wrote.
func (f CNIFile) Sync(want []byte) (wrote bool, err error) {
	cur, err := os.ReadFile(f.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return false, fmt.Errorf("reading CNI config %s: %w", f.Path, err)
	case bytes.Equal(cur, want):
		return false, nil
	case !isOurs(cur):
		return false, &foreignFileError{Path: f.Path}
	}
	if err := writeAtomic(f.Path, want); err != nil {
		return false, fmt.Errorf("writing CNI config %s: %w", f.Path, err)
	}
	return true, nil
}

// Remove deletes the file if it is ours; it reports whether it did.
func (f CNIFile) Remove() (bool, error) {
	cur, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading CNI config %s: %w", f.Path, err)
	}
	if !isOurs(cur) {
		return false, nil
	}
	if err := os.Remove(f.Path); err != nil {
		return false, fmt.Errorf("removing CNI config %s: %w", f.Path, err)
	}
	return true, nil
}

// Shadowing lists the CNI configuration files in the same directory that sort before
// ours: container runtimes use the first one in lexical order, so any of them makes
// the runtime ignore ours.
func (f CNIFile) Shadowing() ([]string, error) {
	dir, base := filepath.Split(f.Path)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if name >= base || e.IsDir() {
			continue
		}
		switch filepath.Ext(name) {
		case ".conf", ".conflist", ".json":
			out = append(out, filepath.Join(dir, name))
		}
	}
	slices.Sort(out)
	return out, nil
}

// foreignFileError says the configured path holds a CNI config kube-routerd did not write.
type foreignFileError struct{ Path string }

func (e *foreignFileError) Error() string {
	return fmt.Sprintf("CNI config %s was not written by kube-routerd (its network is not named %q); leaving it alone", e.Path, networkName)
}

func isOurs(data []byte) bool {
	var head struct {
		Name string `json:"name"`
	}
	return json.Unmarshal(data, &head) == nil && head.Name == networkName
}

// writeAtomic writes data to a temporary file beside path, syncs it and renames it
// over path. The temporary name does not end in .conf/.conflist, so a runtime listing
// the directory never picks it up.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))+"-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename it is already gone
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
