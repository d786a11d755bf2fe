package initproc

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nitropod/nitropod/enclave/nsm"
)

func fuseRequest(opcode uint32, unique uint64, body []byte) fuseIn {
	b := make([]byte, inHeaderSize+len(body))
	le.PutUint32(b[0:], uint32(len(b)))
	le.PutUint32(b[4:], opcode)
	le.PutUint64(b[8:], unique)
	copy(b[inHeaderSize:], body)
	in, err := parseFuseIn(b)
	if err != nil {
		panic(err)
	}
	return in
}

func ioctlRequest(unique uint64, cmd uint32, flags uint32, arg uint64, data []byte, outSize uint32) fuseIn {
	b := make([]byte, ioctlInSize, ioctlInSize+len(data))
	le.PutUint32(b[8:], flags)
	le.PutUint32(b[12:], cmd)
	le.PutUint64(b[16:], arg)
	le.PutUint32(b[24:], uint32(len(data)))
	le.PutUint32(b[28:], outSize)
	return fuseRequest(opIoctl, unique, append(b, data...))
}

type parsedReply struct {
	unique uint64
	errno  syscall.Errno
	body   []byte
}

func parseReply(t *testing.T, b []byte) parsedReply {
	t.Helper()
	if len(b) < outHeaderSize || int(le.Uint32(b)) != len(b) {
		t.Fatalf("reply %x has a bad length", b)
	}
	return parsedReply{unique: le.Uint64(b[8:]), errno: syscall.Errno(-int32(le.Uint32(b[4:]))), body: b[outHeaderSize:]}
}

func rawArg(reqBase, reqLen, respBase, respLen uint64) []byte {
	b := make([]byte, 32)
	le.PutUint64(b[0:], reqBase)
	le.PutUint64(b[8:], reqLen)
	le.PutUint64(b[16:], respBase)
	le.PutUint64(b[24:], respLen)
	return b
}

func iovecs(t *testing.T, body []byte) (in, out []iovec) {
	t.Helper()
	if le.Uint32(body[4:])&ioctlRetry == 0 {
		t.Fatalf("reply %x is not a retry", body)
	}
	nin, nout := int(le.Uint32(body[8:])), int(le.Uint32(body[12:]))
	if len(body) != ioctlOutSize+16*(nin+nout) {
		t.Fatalf("retry reply of %d bytes for %d+%d iovecs", len(body), nin, nout)
	}
	for i := range nin + nout {
		v := iovec{le.Uint64(body[16+16*i:]), le.Uint64(body[24+16*i:])}
		if i < nin {
			in = append(in, v)
		} else {
			out = append(out, v)
		}
	}
	return in, out
}

// The unrestricted-ioctl exchange as fs/fuse/file.c drives it: no data,
// then nsm_raw, then nsm_raw with the request; the answer writes nsm_raw
// (with the response length) and the response.
func TestNSMIoctlProtocol(t *testing.T) {
	const arg, reqAt, respAt = 0x7000, 0x8000, 0x9000
	req := []byte("request-bytes")
	st := nsmIoctl(ioctlRequest(1, nsm.IoctlCmd, ioctlUnrestricted, arg, nil, 0))
	r := parseReply(t, st.reply)
	in, out := iovecs(t, r.body)
	if r.unique != 1 || len(in) != 1 || in[0] != (iovec{arg, 32}) || len(out) != 0 {
		t.Fatalf("first retry asks for %v / %v", in, out)
	}
	raw := rawArg(reqAt, uint64(len(req)), respAt, 1<<20)
	st = nsmIoctl(ioctlRequest(2, nsm.IoctlCmd, ioctlUnrestricted, arg, raw, 0))
	in, out = iovecs(t, parseReply(t, st.reply).body)
	wantIn := []iovec{{arg, 32}, {reqAt, uint64(len(req))}}
	wantOut := []iovec{{arg, 32}, {respAt, nsm.MaxResponse}} // capped
	if !equalIovecs(in, wantIn) || !equalIovecs(out, wantOut) {
		t.Fatalf("second retry asks for %v / %v, want %v / %v", in, out, wantIn, wantOut)
	}
	st = nsmIoctl(ioctlRequest(3, nsm.IoctlCmd, ioctlUnrestricted, arg, append(bytes.Clone(raw), req...), 32+nsm.MaxResponse))
	if st.reply != nil || !bytes.Equal(st.request, req) {
		t.Fatalf("third step: reply %x, request %q", st.reply, st.request)
	}
	r = parseReply(t, st.finish([]byte("response")))
	if r.errno != 0 || r.unique != 3 || len(r.body) != ioctlOutSize+32+8 {
		t.Fatalf("answer %+v", r)
	}
	if le.Uint32(r.body[0:]) != 0 || le.Uint32(r.body[4:]) != 0 {
		t.Errorf("answer result %d flags %d, want 0 0", le.Uint32(r.body[0:]), le.Uint32(r.body[4:]))
	}
	back := r.body[ioctlOutSize : ioctlOutSize+32]
	if !bytes.Equal(back, rawArg(reqAt, uint64(len(req)), respAt, 8)) || string(r.body[ioctlOutSize+32:]) != "response" {
		t.Errorf("answer writes nsm_raw %x and %q", back, r.body[ioctlOutSize+32:])
	}

	// A caller that changed nsm_raw between the steps gets another retry.
	st = nsmIoctl(ioctlRequest(4, nsm.IoctlCmd, ioctlUnrestricted, arg, append(rawArg(reqAt, 99, respAt, 64), req...), 32+64))
	if st.reply == nil {
		t.Fatal("a changed nsm_raw was served")
	}
	iovecs(t, parseReply(t, st.reply).body)

	// A response larger than the caller's buffer: BufferTooSmall, or ENOMEM
	// when not even that fits.
	small := rawArg(reqAt, uint64(len(req)), respAt, 30)
	st = nsmIoctl(ioctlRequest(5, nsm.IoctlCmd, ioctlUnrestricted, arg, append(bytes.Clone(small), req...), 32+30))
	r = parseReply(t, st.finish(make([]byte, 100)))
	if resp, err := nsm.DecodeResponse(r.body[ioctlOutSize+32:]); err != nil || resp.Error != nsm.BufferTooSmall {
		t.Errorf("oversized response: %+v %v", resp, err)
	}
	tiny := rawArg(reqAt, uint64(len(req)), respAt, 2)
	st = nsmIoctl(ioctlRequest(6, nsm.IoctlCmd, ioctlUnrestricted, arg, append(bytes.Clone(tiny), req...), 32+2))
	if r = parseReply(t, st.finish(make([]byte, 100))); r.errno != syscall.ENOMEM {
		t.Errorf("response into 2 bytes: errno %v, want ENOMEM", r.errno)
	}

	for name, c := range map[string]struct {
		in   fuseIn
		want syscall.Errno
	}{
		"oversized request": {ioctlRequest(7, nsm.IoctlCmd, ioctlUnrestricted, arg, rawArg(reqAt, nsm.MaxRequest+1, respAt, 64), 0), syscall.EMSGSIZE},
		"other ioctl":       {ioctlRequest(8, 0x5401, ioctlUnrestricted, arg, nil, 0), syscall.ENOTTY},
		"32-bit caller":     {ioctlRequest(9, nsm.IoctlCmd, ioctlUnrestricted|ioctlCompat, arg, nil, 0), syscall.ENOTTY},
		"restricted":        {ioctlRequest(10, nsm.IoctlCmd, 0, arg, nil, 0), syscall.ENOTTY},
		"truncated":         {fuseRequest(opIoctl, 11, make([]byte, 8)), syscall.EINVAL},
	} {
		st := nsmIoctl(c.in)
		if st.reply == nil {
			t.Errorf("%s: served", name)
			continue
		}
		if r := parseReply(t, st.reply); r.errno != c.want {
			t.Errorf("%s: errno %v, want %v", name, r.errno, c.want)
		}
	}
}

func equalIovecs(a, b []iovec) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCUSEInit(t *testing.T) {
	body := make([]byte, 16)
	le.PutUint32(body[0:], 7)
	le.PutUint32(body[4:], 37)
	b, err := cuseInitReply(fuseRequest(opCuseInit, 1, body))
	if err != nil {
		t.Fatal(err)
	}
	r := parseReply(t, b)
	if le.Uint32(r.body[0:]) != 7 || le.Uint32(r.body[4:]) != 37 || le.Uint32(r.body[12:])&cuseUnrestrictedIoctl == 0 {
		t.Errorf("init out %x", r.body[:cuseInitOut])
	}
	if string(r.body[cuseInitOut:]) != "DEVNAME=nsm\x00" {
		t.Errorf("device info %q", r.body[cuseInitOut:])
	}
	le.PutUint32(body[4:], 10)
	if _, err := cuseInitReply(fuseRequest(opCuseInit, 1, body)); err == nil {
		t.Error("FUSE 7.10 was accepted")
	}
}

// On Nitro, the nsm misc device gets a /dev/nsm node with mode 0666.
func TestEnsureNSMNode(t *testing.T) {
	root := t.TempDir()
	dev, sys := filepath.Join(root, "dev"), filepath.Join(root, "sys")
	mustOK(t, os.MkdirAll(dev, 0o755))
	var made []string
	fakeMknod := func(path string, mode uint32, d int) error {
		made = append(made, path)
		if mode&0o777 != 0o666 || mode&syscall.S_IFCHR == 0 || d != int((10<<8)|123) {
			t.Errorf("mknod %s mode %o dev %#x", path, mode, d)
		}
		return os.WriteFile(path, nil, 0o600) // a stand-in: tests cannot mknod
	}
	ok, err := ensureNSMNode(dev, sys, fakeMknod)
	if ok || err != nil || len(made) != 0 {
		t.Fatalf("without the driver: %v %v %v", ok, err, made)
	}
	mustOK(t, os.MkdirAll(filepath.Join(sys, "class", "misc", "nsm"), 0o755))
	mustOK(t, os.WriteFile(filepath.Join(sys, "class", "misc", "nsm", "dev"), []byte("10:123\n"), 0o644))
	ok, err = ensureNSMNode(dev, sys, fakeMknod)
	if !ok || err != nil || len(made) != 1 || made[0] != filepath.Join(dev, "nsm") {
		t.Fatalf("with the driver: %v %v %v", ok, err, made)
	}
	if fi, err := os.Stat(filepath.Join(dev, "nsm")); err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("the node's mode: %v %v, want 0666", fi.Mode(), err)
	}
	// Something that is not a device at /dev/nsm is refused, not used.
	ok, err = ensureNSMNode(dev, sys, fakeMknod)
	if !ok || err == nil || !strings.Contains(err.Error(), "not a character device") || len(made) != 1 {
		t.Errorf("a regular file at /dev/nsm: %v %v", ok, err)
	}
	mustOK(t, os.WriteFile(filepath.Join(sys, "class", "misc", "nsm", "dev"), []byte("garbage"), 0o644))
	if _, err := ensureNSMNode(dev, sys, fakeMknod); err == nil || !strings.Contains(err.Error(), "MAJOR:MINOR") {
		t.Errorf("a bad device number: %v", err)
	}
}

type postResult struct {
	StatusCode int
	Header     http.Header
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAttestationAPI(t *testing.T) {
	var got []nsm.Request
	call := func(b []byte) ([]byte, error) {
		r, err := nsm.DecodeRequest(b)
		if err != nil {
			return nil, err
		}
		got = append(got, r)
		if string(r.Nonce) == "fail" {
			return nsm.ErrorResponse(nsm.InternalError), nil
		}
		if string(r.Nonce) == "down" {
			return nil, errors.New("no device")
		}
		return nsm.EncodeResponse(nsm.Response{Kind: nsm.KindAttestation, Document: append([]byte("doc:"), r.Nonce...)})
	}
	srv := httptest.NewServer(attestationHandler(call))
	defer srv.Close()
	post := func(body string, hdr ...string) (postResult, []byte) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+AttestationPath, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(resp.Body); err != nil {
			t.Fatal(err)
		}
		return postResult{resp.StatusCode, resp.Header}, buf.Bytes()
	}
	b64 := base64.StdEncoding.EncodeToString
	resp, body := post(`{"nonce":"` + b64([]byte("n1")) + `","user_data":"` + b64([]byte("u")) + `","public_key":"` + b64([]byte("k")) + `"}`)
	var ar attestationResponse
	if resp.StatusCode != 200 || json.Unmarshal(body, &ar) != nil || string(ar.Document) != "doc:n1" {
		t.Errorf("status %d body %s", resp.StatusCode, body)
	}
	if len(got) != 1 || string(got[0].UserData) != "u" || string(got[0].PublicKey) != "k" {
		t.Errorf("NSM request %+v", got)
	}
	if resp, body = post(`{"nonce":"`+b64([]byte("n2"))+`"}`, "Accept", "application/cbor"); resp.StatusCode != 200 || string(body) != "doc:n2" || resp.Header.Get("Content-Type") != "application/cbor" {
		t.Errorf("CBOR: %d %q", resp.StatusCode, body)
	}
	if resp, _ = post(``); resp.StatusCode != 200 {
		t.Errorf("empty body: %d", resp.StatusCode)
	}
	for _, c := range []struct {
		body string
		want int
		in   string
	}{
		{`{"nonce": 5}`, 400, "not JSON"},
		{`{"nonce":"` + b64(make([]byte, 513)) + `"}`, 400, "InputTooLarge"},
		{`{"user_data":"` + b64(make([]byte, 513)) + `"}`, 400, "user_data"},
		{`{"public_key":"` + b64(make([]byte, 1025)) + `"}`, 400, "public_key"},
		{`{"nonce":"` + b64([]byte("fail")) + `"}`, 500, "InternalError"},
		{`{"nonce":"` + b64([]byte("down")) + `"}`, 503, "no device"},
	} {
		resp, body := post(c.body)
		if resp.StatusCode != c.want || !strings.Contains(string(body), c.in) {
			t.Errorf("%s: %d %s, want %d with %q", c.body, resp.StatusCode, body, c.want, c.in)
		}
	}
	r, err := http.Get(srv.URL + AttestationPath)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", r.StatusCode)
	}
	for p, want := range map[int]int{0: 9910, -1: 0, 8080: 8080} {
		if got, err := attestationPort(p, 9910); err != nil || got != want {
			t.Errorf("port %d: %d %v", p, got, err)
		}
	}
	if _, err := attestationPort(70000, 9910); err == nil {
		t.Error("port 70000 accepted")
	}
}

// Whatever the kernel hands over, the CUSE ioctl step never panics, and its
// answer is a well-formed reply to the same request.
func FuzzNSMIoctl(f *testing.F) {
	f.Add(ioctlRequest(1, nsm.IoctlCmd, ioctlUnrestricted, 0x1000, nil, 0).body)
	f.Add(ioctlRequest(2, nsm.IoctlCmd, ioctlUnrestricted, 0x1000, append(rawArg(1, 3, 2, 64), 'a', 'b', 'c'), 96).body)
	f.Fuzz(func(t *testing.T, body []byte) {
		st := nsmIoctl(fuseRequest(opIoctl, 7, body))
		b := st.reply
		if b == nil {
			b = st.finish(bytes.Repeat([]byte{1}, len(st.request)))
		}
		if r := parseReply(t, b); r.unique != 7 {
			t.Fatalf("reply to request %d", r.unique)
		}
	})
}
