package nitropod

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// mdRef is a name of a markdown document: a path or file name ending in
// ".md", not followed by more name characters.
var mdRef = regexp.MustCompile(`[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b`)

// mdLink is the target of a markdown link or image: [text](target).
var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// urlRE removes URLs before names are looked for (a page on the web may
// end in .md).
var urlRE = regexp.MustCompile(`[a-z]+://[^\s)>\]"'` + "`" + `]+`)

// externalDocs are documents of other projects that comments cite by their
// file name; the line must name the project too.
var externalDocs = map[string]string{
	"spec.md":  "hashicorp/yamux", // yamux's protocol specification
	"layer.md": "image-spec",      // the OCI image layer specification
}

// TestDocumentReferences fails when a .go, .md or .sh file names a markdown
// document, or a markdown file links to a file, that does not exist in the
// repository. A name is looked up next to the file that mentions it, then
// from the repository root, so a bare "ARCHITECTURE.md" in a package
// directory is wrong: documents live in docs/ and are named docs/NAME.md.
func TestDocumentReferences(t *testing.T) {
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	files, refs := 0, 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || name == "_output" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		ext := filepath.Ext(name)
		if (ext != ".go" && ext != ".md" && ext != ".sh") || name == "docs_test.go" {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		files++
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for line := 1; sc.Scan(); line++ {
			text := urlRE.ReplaceAllString(sc.Text(), "")
			for _, ref := range mdRef.FindAllString(text, -1) {
				refs++
				if project, ok := externalDocs[ref]; ok && strings.Contains(text, project) {
					continue
				}
				if !existsFrom(root, filepath.Dir(p), ref) {
					t.Errorf("%s:%d names %s, which is not in the repository (documents are in docs/; write docs/NAME.md)", rel, line, ref)
				}
			}
			if ext != ".md" {
				continue
			}
			for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
				target := m[1]
				if strings.HasPrefix(target, "#") || strings.HasPrefix(target, "mailto:") || strings.Contains(target, "://") {
					continue
				}
				target, _, _ = strings.Cut(target, "#")
				refs++
				if _, err := os.Stat(filepath.Join(filepath.Dir(p), target)); err != nil {
					t.Errorf("%s:%d links to %s, which does not exist (links are relative to the file)", rel, line, m[1])
				}
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 || refs < 10 {
		t.Fatalf("scanned %d files and %d references: the walk did not cover the repository", files, refs)
	}
}

// existsFrom reports whether ref names a file relative to dir or to root,
// without leaving root.
func existsFrom(root, dir, ref string) bool {
	for _, base := range []string{dir, root} {
		p := filepath.Join(base, ref)
		if r, err := filepath.Rel(root, p); err != nil || strings.HasPrefix(r, "..") {
			continue
		}
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return true
		}
	}
	return false
}

// TestDocsExist: the documents the package docs rely on are in docs/.
func TestDocsExist(t *testing.T) {
	for _, name := range []string{"ARCHITECTURE.md", "EIF-FORMAT.md", "TESTENV.md"} {
		fi, err := os.Stat(filepath.Join("docs", name))
		if err != nil || fi.Size() < 1000 {
			t.Errorf("docs/%s: %v (size %d)", name, err, sizeOf(fi))
		}
	}
}

func sizeOf(fi os.FileInfo) int64 {
	if fi == nil {
		return 0
	}
	return fi.Size()
}
