package nlbatch

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAttrsReadsWhatAppendAttrAndNestedWrite(t *testing.T) {
	b := AppendAttr(nil, 1, []byte{0xaa})
	b, nest := BeginNested(b, 2|unix.NLA_F_NESTED)
	b = AppendAttr(b, 3, []byte("abcde"))
	b = AppendAttr(b, 4|unix.NLA_F_NET_BYTEORDER, []byte{0, 80})
	b = EndNested(b, nest)
	b = append(b, 0xff, 0xff) // a truncated attribute at the end is ignored

	type attr struct {
		typ uint16
		val []byte
	}
	var top []attr
	for typ, val := range Attrs(b) {
		top = append(top, attr{typ, val})
	}
	if len(top) != 2 || top[0].typ != 1 || !bytes.Equal(top[0].val, []byte{0xaa}) || top[1].typ != 2 {
		t.Fatalf("top level = %v", top)
	}
	var inner []attr
	for typ, val := range Attrs(top[1].val) {
		inner = append(inner, attr{typ, val})
	}
	if len(inner) != 2 || inner[0].typ != 3 || string(inner[0].val) != "abcde" || inner[1].typ != 4 || !bytes.Equal(inner[1].val, []byte{0, 80}) {
		t.Fatalf("nested = %v", inner)
	}
	for range Attrs([]byte{3, 0, 1, 0}) { // length below the header size
		t.Fatal("a malformed attribute was yielded")
	}
}
