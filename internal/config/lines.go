package config

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// keyLines maps a dotted key to the line where the file sets it. The TOML decoder
// keeps key positions private, so we scan the (simple, flat) config file ourselves.
// Keys inside an array of tables are recorded both as "routing.peers[1].asn" and,
// for the first occurrence, as "routing.peers.asn" (the form the decoder reports).
type keyLines map[string]int

func indexKeyLines(data []byte) keyLines {
	lines := keyLines{}
	arrayCount := map[string]int{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "[["):
			name := trimKey(strings.TrimSuffix(strings.TrimPrefix(stripComment(line), "[["), "]]"))
			section = fmt.Sprintf("%s[%d]", name, arrayCount[name])
			arrayCount[name]++
			lines.setOnce(section, n)
			lines.setOnce(name, n)
		case strings.HasPrefix(line, "["):
			section = trimKey(strings.TrimSuffix(strings.TrimPrefix(stripComment(line), "["), "]"))
			lines.setOnce(section, n)
		default:
			eq := strings.Index(line, "=")
			if eq <= 0 {
				continue
			}
			key := trimKey(line[:eq])
			full := key
			if section != "" {
				full = section + "." + key
			}
			lines.setOnce(full, n)
			if i := strings.Index(section, "["); i >= 0 {
				lines.setOnce(section[:i]+"."+key, n)
			}
		}
	}
	return lines
}

func (l keyLines) setOnce(key string, n int) {
	if _, ok := l[key]; !ok {
		l[key] = n
	}
}

// find returns the line of key, or of its closest enclosing table, or 0.
func (l keyLines) find(key string) int {
	for k := key; k != ""; {
		if n, ok := l[k]; ok {
			return n
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

func trimKey(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

func stripComment(s string) string {
	if i := strings.Index(s, "#"); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}
