package eif

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// MaxCustomMetadata is the largest custom metadata nitro-cli accepts.
const MaxCustomMetadata = 4096

// Metadata is the metadata section (AWS's EifIdentityInfo). Its JSON has
// AWS's key order; DockerInfo and CustomMetadata are written with their keys
// sorted, as serde_json writes its Value maps.
type Metadata struct {
	ImageName    string        `json:"ImageName"`
	ImageVersion string        `json:"ImageVersion"`
	Build        BuildMetadata `json:"BuildMetadata"`
	// DockerInfo is the image's inspect JSON (any JSON value).
	DockerInfo json.RawMessage `json:"DockerInfo"`
	// CustomMetadata is the user's JSON (at most MaxCustomMetadata bytes), or null.
	CustomMetadata json.RawMessage `json:"CustomMetadata"`
}

// BuildMetadata says how and when an EIF was built (AWS's EifBuildInfo).
type BuildMetadata struct {
	// BuildTime is RFC 3339.
	BuildTime        string `json:"BuildTime"`
	BuildTool        string `json:"BuildTool"`
	BuildToolVersion string `json:"BuildToolVersion"`
	OperatingSystem  string `json:"OperatingSystem"`
	KernelVersion    string `json:"KernelVersion"`
}

// FormatBuildTime formats t as the metadata's BuildTime, as AWS's builder
// does (chrono's to_rfc3339: UTC as +00:00, fractional seconds in groups of
// three digits, none for whole seconds).
func FormatBuildTime(t time.Time) string {
	t = t.UTC()
	ns := t.Nanosecond()
	layout := "2006-01-02T15:04:05"
	switch {
	case ns == 0:
	case ns%1_000_000 == 0:
		layout += ".000"
	case ns%1_000 == 0:
		layout += ".000000"
	default:
		layout += ".000000000"
	}
	return t.Format(layout) + "+00:00"
}

// MarshalJSON writes the compact JSON of the metadata section.
func (m *Metadata) MarshalJSON() ([]byte, error) {
	docker, err := canonicalJSON(m.DockerInfo, "DockerInfo")
	if err != nil {
		return nil, err
	}
	custom, err := canonicalJSON(m.CustomMetadata, "CustomMetadata")
	if err != nil {
		return nil, err
	}
	if len(m.CustomMetadata) > MaxCustomMetadata {
		return nil, fmt.Errorf("encoding eif metadata: custom metadata is %d bytes, at most %d allowed", len(m.CustomMetadata), MaxCustomMetadata)
	}
	type plain Metadata // without this method
	p := plain(*m)
	p.DockerInfo, p.CustomMetadata = docker, custom
	return marshalNoEscape(p)
}

// canonicalJSON re-encodes a JSON value with sorted keys and no HTML
// escaping (serde_json's output); empty means null.
func canonicalJSON(raw json.RawMessage, what string) (json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return json.RawMessage("null"), nil
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("encoding eif metadata: %s is not valid JSON: %w", what, err)
	}
	if d.More() {
		return nil, fmt.Errorf("encoding eif metadata: %s holds more than one JSON value", what)
	}
	return marshalNoEscape(v)
}

func marshalNoEscape(v any) ([]byte, error) {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
