package initproc

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitropod/nitropod/enclave/agent"
)

// fakeSys builds a directory standing in for / with the sysfs and /dev
// entries pickTransport reads.
type fakeSys struct {
	t    *testing.T
	root string
}

func newFakeSys(t *testing.T) *fakeSys { return &fakeSys{t: t, root: t.TempDir()} }

func (f *fakeSys) write(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeSys) mkdir(rel string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Join(f.root, rel), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

// virtioDevice adds a device with the given virtio ID to the virtio bus.
func (f *fakeSys) virtioDevice(name, id string) {
	f.write(filepath.Join(virtioDevicesDir, name, "device"), id+"\n")
}

// port adds a virtio-serial port and its device node.
func (f *fakeSys) port(dev, name string) {
	f.write(filepath.Join(virtioPortsDir, dev, "name"), name+"\n")
	f.write(filepath.Join("dev", dev), "")
}

func (f *fakeSys) vsock() { f.write(vsockDevice, "") }

// nitro lays out what a Nitro enclave shows: AWS's kernel has virtio_console
// built in, so the virtio-ports class exists, but the enclave's only virtio
// devices are vsock (ID 19) and the NSM (ID 33).
func (f *fakeSys) nitro() {
	f.mkdir(virtioPortsDir)
	f.virtioDevice("virtio0", "0x0013")
	f.virtioDevice("virtio1", "0x0021")
	f.vsock()
}

func TestPickTransport(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(f *fakeSys)
		waited time.Duration
		want   string // "port", "vsock", "wait" or an error substring
	}{
		{name: "nitro: vsock at once although virtio-ports exists", setup: (*fakeSys).nitro, want: "vsock"},
		{name: "nitro kernel without virtio_console", setup: func(f *fakeSys) {
			f.virtioDevice("virtio0", "0x0013")
			f.vsock()
		}, want: "vsock"},
		{name: "emulation: the named port", setup: func(f *fakeSys) {
			f.virtioDevice("virtio0", "0x0003")
			f.port("vport1p1", "other")
			f.port("vport1p2", agent.PortName)
		}, want: "port"},
		{name: "emulation: console device, port not up yet", setup: func(f *fakeSys) {
			f.virtioDevice("virtio0", "0x0003")
			f.mkdir(virtioPortsDir)
		}, waited: 5 * time.Second, want: "wait"},
		{name: "port name without its device node", setup: func(f *fakeSys) {
			f.virtioDevice("virtio0", "0x0003")
			f.write(filepath.Join(virtioPortsDir, "vport1p1", "name"), agent.PortName)
		}, want: "wait"},
		{name: "console device and vsock: wait for the port first", setup: func(f *fakeSys) {
			f.virtioDevice("virtio0", "0x0003")
			f.vsock()
		}, waited: portGrace / 2, want: "wait"},
		{name: "console device and vsock: vsock after the grace", setup: func(f *fakeSys) {
			f.virtioDevice("virtio0", "0x0003")
			f.vsock()
		}, waited: portGrace, want: "vsock"},
		{name: "the port wins over vsock", setup: func(f *fakeSys) {
			f.nitro()
			f.virtioDevice("virtio2", "0x0003")
			f.port("vport2p1", agent.PortName)
		}, want: "port"},
		{name: "nothing yet", setup: func(*fakeSys) {}, waited: transportTimeout - time.Millisecond, want: "wait"},
		{name: "nothing in time", setup: func(*fakeSys) {}, waited: transportTimeout, want: "neither the virtio-serial port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSys(t)
			tc.setup(f)
			tr, err := pickTransport(f.root, tc.waited)
			got := "wait"
			switch {
			case err != nil:
				got = err.Error()
			case tr.vsock:
				got = "vsock"
			case tr.port != "":
				got = "port"
				if b, err := os.ReadFile(filepath.Join(f.root, virtioPortsDir, filepath.Base(tr.port), "name")); err != nil || strings.TrimSpace(string(b)) != agent.PortName {
					t.Errorf("picked port %s, which is not %q", tr.port, agent.PortName)
				}
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("pickTransport(waited %v) = %q, want %q", tc.waited, got, tc.want)
			}
		})
	}
}

// TestWaitTransportNoDelayOnNitro: on a Nitro layout the choice is made on
// the first look, without sleeping.
func TestWaitTransportNoDelayOnNitro(t *testing.T) {
	f := newFakeSys(t)
	f.nitro()
	var slept time.Duration
	now := time.Unix(0, 0)
	tr, err := waitTransport(f.root, func() time.Time { return now.Add(slept) }, func(d time.Duration) { slept += d })
	if err != nil || !tr.vsock {
		t.Fatalf("waitTransport = %+v, %v; want vsock", tr, err)
	}
	if slept != 0 {
		t.Errorf("waited %v before choosing vsock, want no wait", slept)
	}
}

// TestWaitTransportPortAppears: in emulation the port comes up a little
// after the console device; init waits for it and takes it.
func TestWaitTransportPortAppears(t *testing.T) {
	f := newFakeSys(t)
	f.virtioDevice("virtio0", "0x0003")
	f.mkdir(virtioPortsDir)
	var slept time.Duration
	now := time.Unix(0, 0)
	tr, err := waitTransport(f.root, func() time.Time { return now.Add(slept) }, func(d time.Duration) {
		slept += d
		if slept >= 200*time.Millisecond {
			f.port("vport0p1", agent.PortName)
		}
	})
	if err != nil || tr.port != filepath.Join(f.root, "dev/vport0p1") {
		t.Fatalf("waitTransport = %+v, %v; want the port", tr, err)
	}
}

// fakeVsock stands in for the enclave's AF_VSOCK (no vsock transport exists
// on the test machine): it records the dials and answers the heartbeat.
type fakeVsock struct {
	cid     uint32
	cidErr  error
	dials   [][2]uint32
	refuse  map[[2]uint32]error
	channel *bytes.Buffer
}

type rwc struct {
	io.Reader
	io.Writer
}

func (rwc) Close() error { return nil }

func (f *fakeVsock) LocalCID() (uint32, error) { return f.cid, f.cidErr }

func (f *fakeVsock) Dial(cid, port uint32) (io.ReadWriteCloser, error) {
	f.dials = append(f.dials, [2]uint32{cid, port})
	if err := f.refuse[[2]uint32{cid, port}]; err != nil {
		return nil, err
	}
	if cid == agent.HeartbeatCID && port == agent.HeartbeatPort {
		return rwc{bytes.NewReader([]byte{agent.HeartbeatByte}), io.Discard}, nil
	}
	f.channel = &bytes.Buffer{}
	return rwc{f.channel, f.channel}, nil
}

func TestDialVsockChannel(t *testing.T) {
	f := &fakeVsock{cid: 4242}
	c, err := dialVsockChannel(f)
	if err != nil {
		t.Fatalf("dialVsockChannel: %v", err)
	}
	c.Close()
	want := [][2]uint32{{agent.HeartbeatCID, agent.HeartbeatPort}, {agent.ParentCID, agent.ChannelPortBase + 4242}}
	if len(f.dials) != 2 || f.dials[0] != want[0] || f.dials[1] != want[1] {
		t.Errorf("dials %v, want the heartbeat then the launcher's port: %v", f.dials, want)
	}
}

func TestDialVsockChannelErrors(t *testing.T) {
	port := uint32(agent.ChannelPortBase + 77)
	for _, tc := range []struct {
		name      string
		f         *fakeVsock
		err       string
		wantDials int
	}{
		{name: "no CID", f: &fakeVsock{cidErr: errors.New("no such device")}, err: "reading the enclave's vsock CID: no such device"},
		{name: "CID without a port", f: &fakeVsock{cid: agent.MaxChannelCID + 1}, err: "has no agent channel port"},
		{name: "no heartbeat listener", f: &fakeVsock{cid: 77, refuse: map[[2]uint32]error{{agent.HeartbeatCID, agent.HeartbeatPort}: errors.New("connection reset")}},
			err: "heartbeat to vsock 3:9000: connection reset", wantDials: 1},
		// The launcher is gone: one attempt, no retries that could reach
		// whoever binds the port next.
		{name: "launcher gone", f: &fakeVsock{cid: 77, refuse: map[[2]uint32]error{{agent.ParentCID, port}: errors.New("connection reset")}},
			err: "connecting to the launcher at vsock 3:2147483725 (enclave CID 77): connection reset", wantDials: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dialVsockChannel(tc.f)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			if len(tc.f.dials) != tc.wantDials {
				t.Errorf("%d dials %v, want %d", len(tc.f.dials), tc.f.dials, tc.wantDials)
			}
		})
	}
}
