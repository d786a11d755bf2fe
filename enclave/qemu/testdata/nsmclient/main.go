// nsmclient is a static test program for the enclave: it talks to /dev/nsm
// with the NSM driver's raw ioctl (no NSM library) and to init's
// attestation HTTP API, and prints KEY=VALUE lines for the test to check.
//
//	nsmclient attest NONCEHEX USERDATAHEX   document from the ioctl and the API
//	nsmclient pcr                           ExtendPCR/DescribePCR/LockPCR on PCR16
//	nsmclient bench N                       N GetAttestationDoc calls: p50/p99
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/fxamacker/cbor/v2"
)

// nsmIoctl is _IOWR(0x0A, 0, struct { struct iovec request, response; }).
const nsmIoctl = 0xC0200A00

func call(fd int, req []byte) ([]byte, error) {
	resp := make([]byte, 0x3000)
	raw := [4]uint64{
		uint64(uintptr(unsafe.Pointer(&req[0]))), uint64(len(req)),
		uint64(uintptr(unsafe.Pointer(&resp[0]))), uint64(len(resp)),
	}
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), nsmIoctl, uintptr(unsafe.Pointer(&raw)))
	if errno != 0 {
		return nil, errno
	}
	return resp[:raw[3]], nil
}

// rdtsc reads the time-stamp counter (rdtsc_amd64.s).
func rdtsc() uint64

func must(err error) {
	if err != nil {
		fmt.Println("ERROR=" + err.Error())
		os.Exit(1)
	}
}

func request(fd int, v any) map[string]cbor.RawMessage {
	req, err := cbor.Marshal(v)
	must(err)
	out, err := call(fd, req)
	must(err)
	var unit string
	if cbor.Unmarshal(out, &unit) == nil {
		return map[string]cbor.RawMessage{unit: nil}
	}
	var m map[string]cbor.RawMessage
	must(cbor.Unmarshal(out, &m))
	return m
}

func main() {
	fd, err := syscall.Open("/dev/nsm", syscall.O_RDWR, 0)
	must(err)
	fmt.Printf("UID=%d\n", os.Getuid())
	switch os.Args[1] {
	case "attest":
		nonce, _ := hex.DecodeString(os.Args[2])
		ud, _ := hex.DecodeString(os.Args[3])
		m := request(fd, map[string]any{"Attestation": map[string]any{"user_data": ud, "nonce": nonce, "public_key": nil}})
		var a struct {
			Document []byte `cbor:"document"`
		}
		must(cbor.Unmarshal(m["Attestation"], &a))
		fmt.Println("DOC=" + base64.StdEncoding.EncodeToString(a.Document))
		body, _ := json.Marshal(map[string][]byte{"nonce": nonce, "user_data": ud})
		var r *http.Response
		hc := &http.Client{Timeout: 60 * time.Second}
		for range 50 { // the API starts with the app; give it a moment
			if r, err = hc.Post("http://127.0.0.1:9910/v1/attestation", "application/json", bytes.NewReader(body)); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		must(err)
		var hr struct {
			Document []byte `json:"document"`
		}
		must(json.NewDecoder(r.Body).Decode(&hr))
		fmt.Println("HTTPSTATUS=" + strconv.Itoa(r.StatusCode))
		fmt.Println("HTTPDOC=" + base64.StdEncoding.EncodeToString(hr.Document))
		big := make([]byte, 513)
		m = request(fd, map[string]any{"Attestation": map[string]any{"user_data": big, "nonce": nil, "public_key": nil}})
		var code string
		_ = cbor.Unmarshal(m["Error"], &code)
		fmt.Println("BIGUSERDATA=" + code)
	case "pcr":
		data := []byte("nitropod")
		m := request(fd, map[string]any{"ExtendPCR": map[string]any{"index": 16, "data": data}})
		var e struct {
			Data []byte `cbor:"data"`
		}
		must(cbor.Unmarshal(m["ExtendPCR"], &e))
		fmt.Println("EXTENDED=" + hex.EncodeToString(e.Data))
		m = request(fd, map[string]any{"DescribePCR": map[string]any{"index": 16}})
		var d struct {
			Lock bool   `cbor:"lock"`
			Data []byte `cbor:"data"`
		}
		must(cbor.Unmarshal(m["DescribePCR"], &d))
		fmt.Printf("DESCRIBED=%s LOCK=%v\n", hex.EncodeToString(d.Data), d.Lock)
		m = request(fd, map[string]any{"LockPCR": map[string]any{"index": 16}})
		for k := range m {
			fmt.Println("LOCKED=" + k)
		}
		m = request(fd, map[string]any{"ExtendPCR": map[string]any{"index": 16, "data": data}})
		var code string
		_ = cbor.Unmarshal(m["Error"], &code)
		fmt.Println("EXTENDLOCKED=" + code)
		m = request(fd, map[string]any{"ExtendPCR": map[string]any{"index": 0, "data": data}})
		_ = cbor.Unmarshal(m["Error"], &code)
		fmt.Println("EXTENDPCR0=" + code)
	case "bench":
		// The guest's clock ticks coarsely under TCG (jiffies), so calls are
		// timed with the TSC, calibrated against the clock over the whole run.
		n, _ := strconv.Atoi(os.Args[2])
		req, _ := cbor.Marshal(map[string]any{"Attestation": map[string]any{"user_data": nil, "nonce": []byte("bench"), "public_key": nil}})
		ticks := make([]uint64, 0, n)
		t0, c0 := time.Now(), rdtsc()
		for range n {
			a := rdtsc()
			_, err := call(fd, req)
			must(err)
			ticks = append(ticks, rdtsc()-a)
		}
		wall, cycles := time.Since(t0), rdtsc()-c0
		perTick := float64(wall) / float64(cycles) // ns per TSC tick
		sort.Slice(ticks, func(i, j int) bool { return ticks[i] < ticks[j] })
		d := func(t uint64) time.Duration { return time.Duration(float64(t) * perTick).Round(time.Microsecond) }
		cs, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
		fmt.Printf("P50=%s P99=%s MAX=%s MEAN=%s N=%d WALL=%s CLOCKSOURCE=%s\n", d(ticks[n/2]), d(ticks[n*99/100]), d(ticks[n-1]),
			(wall / time.Duration(n)).Round(time.Microsecond), n, wall.Round(time.Millisecond), strings.TrimSpace(string(cs)))
	}
}
