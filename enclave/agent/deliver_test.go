package agent

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// recorder is a DeliveryHandler that keeps what it got and refuses
// deliveries whose env holds refuse.
type recorder struct {
	mu      sync.Mutex
	got     []Delivery
	updates map[int][][]DeliveredFile
	refuse  string
}

func (r *recorder) Deliver(d Delivery) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range d.Env {
		if r.refuse != "" && strings.HasPrefix(e, r.refuse+"=") {
			return errors.New("env " + r.refuse + " is not allowed")
		}
	}
	r.got = append(r.got, d)
	return nil
}

func (r *recorder) Update(m int, files []DeliveredFile) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.updates == nil {
		r.updates = map[int][][]DeliveredFile{}
	}
	r.updates[m] = append(r.updates[m], files)
	return nil
}

func TestDeliverRoundTrip(t *testing.T) {
	c, g := pair(t)
	rec := &recorder{}
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*DeliverChunk+17)/16) // spans 4 frames
	d := Delivery{
		Hostname: "web-0",
		Env:      []string{"DB_PASSWORD=s3cret", "KUBERNETES_SERVICE_HOST=10.0.0.1"},
		Mounts: []DeliveredMount{
			{Path: "/etc/hosts", Kind: MountFile, Files: []DeliveredFile{{Mode: 0o644, Data: []byte("127.0.0.1 localhost\n")}}},
			{Path: "/etc/app", Kind: MountDir, Atomic: true, ReadOnly: true, Files: []DeliveredFile{
				{Name: "a.conf", Mode: 0o444, Data: []byte("x=1")}, {Name: "sub/big", Mode: 0o400, UID: 7, GID: 8, Data: big}, {Name: "empty", Mode: 0o444},
			}},
			{Path: "/scratch", Kind: MountTmpfs, SizeLimit: 1 << 20},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { time.Sleep(50 * time.Millisecond); g.HandleDeliveries(rec) }() // a stream may arrive before init is ready
	dl, err := c.Deliver(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.got) != 1 {
		t.Fatalf("handler got %d deliveries", len(rec.got))
	}
	if diff := cmp.Diff(d, rec.got[0], cmp.Comparer(func(a, b []DeliveredFile) bool { return cmp.Equal(a, b, cmp.Comparer(filesEqual)) })); diff != "" {
		t.Errorf("delivery (-sent +got):\n%s", diff)
	}
	if err := dl.Update(ctx, 1, []DeliveredFile{{Name: "a.conf", Mode: 0o444, Data: []byte("x=2")}}); err != nil {
		t.Fatal(err)
	}
	if u := rec.updates[1]; len(u) != 1 || string(u[0][0].Data) != "x=2" {
		t.Errorf("update = %+v", rec.updates)
	}
	if err := dl.Update(ctx, 9, nil); err == nil {
		t.Error("update of an unknown mount accepted")
	}
}

func filesEqual(a, b DeliveredFile) bool {
	return a.Name == b.Name && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && bytes.Equal(a.Data, b.Data)
}

func TestDeliverRefused(t *testing.T) {
	c, g := pair(t)
	g.HandleDeliveries(&recorder{refuse: "LD_PRELOAD"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Deliver(ctx, Delivery{Env: []string{"LD_PRELOAD=/x.so"}})
	var de *DeliveryError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "env LD_PRELOAD is not allowed") {
		t.Fatalf("err = %v, want init's refusal", err)
	}
}

func TestDeliverRejectsBadNames(t *testing.T) {
	for _, n := range []string{"../x", "/abs", "a/../b", "..data", "a/..2024", "a//b"} {
		if CheckFileName(n) == nil {
			t.Errorf("file name %q accepted", n)
		}
	}
	c, g := pair(t)
	g.HandleDeliveries(&recorder{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Deliver(ctx, Delivery{Mounts: []DeliveredMount{{Path: "/v", Kind: MountDir, Files: []DeliveredFile{{Name: "../../etc/passwd"}}}}})
	if err == nil || !strings.Contains(err.Error(), `delivered file name "../../etc/passwd"`) {
		t.Fatalf("err = %v", err)
	}
}
