// Command verify checks Backchannel's signed checkpoints and Merkle proofs
// (DESIGN §7) with Go's golang.org/x/mod/sumdb/note and sumdb/tlog, the
// code behind Go's checksum database: an implementation that is not ours.
//
// It reads the JSON file named by its argument (written by
// tests/interop.rs), prints one line per check, and at the first failure
// prints "FAIL <what>: <why>" and exits 1.
//
// Build it in GOPATH mode against Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o verify verify.go
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// input is the file's content. []byte fields are base64 in JSON.
type input struct {
	VerifierKey string `json:"verifier_key"`
	// Checkpoint is the head's signed note.
	Checkpoint string `json:"checkpoint"`
	Inclusion  []struct {
		LeafIndex int64    `json:"leaf_index"`
		TreeSize  int64    `json:"tree_size"`
		Event     []byte   `json:"event"`
		Hashes    [][]byte `json:"hashes"`
		Note      string   `json:"note"`
	} `json:"inclusion"`
	Consistency []struct {
		FirstSize  int64    `json:"first_size"`
		SecondSize int64    `json:"second_size"`
		Hashes     [][]byte `json:"hashes"`
		FirstNote  string   `json:"first_note"`
		SecondNote string   `json:"second_note"`
	} `json:"consistency"`
}

func main() {
	if len(os.Args) != 2 {
		fail("usage", fmt.Errorf("verify FILE.json"))
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("input", err)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fail("input", err)
	}
	v, err := note.NewVerifier(in.VerifierKey)
	if err != nil {
		fail("verifier key", err)
	}
	checks := 0
	ok := func(format string, args ...any) {
		checks++
		fmt.Printf("ok "+format+"\n", args...)
	}

	size, root := checkpoint(v, "checkpoint", in.Checkpoint)
	ok("checkpoint: %s, size %d, root %s", v.Name(), size, root)

	for _, p := range in.Inclusion {
		what := fmt.Sprintf("inclusion of leaf %d in tree %d", p.LeafIndex, p.TreeSize)
		root := checkpointOfSize(v, what, p.Note, p.TreeSize)
		// RFC 9162 leaf hash: SHA-256(0x00 || event bytes).
		leaf := tlog.RecordHash(p.Event)
		if err := tlog.CheckRecord(hashes(what, p.Hashes), p.TreeSize, root, p.LeafIndex, leaf); err != nil {
			fail(what, err)
		}
		ok("%s", what)
	}

	for _, p := range in.Consistency {
		what := fmt.Sprintf("consistency of tree %d with tree %d", p.FirstSize, p.SecondSize)
		first := checkpointOfSize(v, what+" (first note)", p.FirstNote, p.FirstSize)
		second := checkpointOfSize(v, what+" (second note)", p.SecondNote, p.SecondSize)
		if err := tlog.CheckTree(hashes(what, p.Hashes), p.SecondSize, second, p.FirstSize, first); err != nil {
			fail(what, err)
		}
		ok("%s", what)
	}
	fmt.Printf("all %d checks passed\n", checks)
}

// checkpoint opens a signed note with the verifier and parses its text as
// a C2SP tlog-checkpoint: exactly "<origin>\n<size>\n<base64 root>\n",
// whose origin is the key's name. (tlog.ParseTree wants go.sum's header.)
func checkpoint(v note.Verifier, what, msg string) (int64, tlog.Hash) {
	n, err := note.Open([]byte(msg), note.VerifierList(v))
	if err != nil {
		fail(what, err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		fail(what, fmt.Errorf("checkpoint is not three lines: %q", n.Text))
	}
	if lines[0] != v.Name() {
		fail(what, fmt.Errorf("origin %q is not the key's name %q", lines[0], v.Name()))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		fail(what, fmt.Errorf("bad tree size %q", lines[1]))
	}
	b, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(b) != tlog.HashSize {
		fail(what, fmt.Errorf("bad root hash %q", lines[2]))
	}
	var root tlog.Hash
	copy(root[:], b)
	return size, root
}

// checkpointOfSize is checkpoint, and its size must be the one the proof
// is for; it returns the root.
func checkpointOfSize(v note.Verifier, what, msg string, want int64) tlog.Hash {
	size, root := checkpoint(v, what, msg)
	if size != want {
		fail(what, fmt.Errorf("the note is of size %d, not %d", size, want))
	}
	return root
}

// hashes turns a proof's byte strings into tlog hashes.
func hashes(what string, raw [][]byte) []tlog.Hash {
	out := make([]tlog.Hash, len(raw))
	for i, h := range raw {
		if len(h) != tlog.HashSize {
			fail(what, fmt.Errorf("proof hash %d is %d bytes", i, len(h)))
		}
		copy(out[i][:], h)
	}
	return out
}

// fail reports the first failed check and exits 1.
func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", what, err)
	os.Exit(1)
}
