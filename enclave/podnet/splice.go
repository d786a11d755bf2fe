package podnet

import (
	"io"
	"net"
	"sync"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

type closeWriter interface{ CloseWrite() error }

// Splice copies a↔b until both directions ended, passing half-closes on
// (EOF from one side shuts the other's write side), then closes both. A
// broken direction ends the whole connection.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		bp := bufPool.Get().(*[]byte)
		_, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
		bufPool.Put(bp)
		if err != nil {
			a.Close()
			b.Close()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// readerOnly hides WriteTo so that io.CopyBuffer uses the pooled
// buffer instead of allocating its own.
type readerOnly struct{ io.Reader }

// writerOnly hides ReadFrom for the same reason.
type writerOnly struct{ io.Writer }
