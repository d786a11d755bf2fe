package eif

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
)

// Description is what `nitro-cli describe-eif` prints for an EIF.
type Description struct {
	EifVersion   uint16       `json:"EifVersion"`
	Measurements Measurements `json:"Measurements"`
	IsSigned     bool         `json:"IsSigned"`
	CheckCRC     bool         `json:"CheckCRC"`
	// CheckSignature is present for signed images.
	CheckSignature *bool  `json:"CheckSignature,omitempty"`
	ImageName      string `json:"ImageName,omitempty"`
	ImageVersion   string `json:"ImageVersion,omitempty"`
	// Metadata is the build metadata with DockerInfo, and the custom
	// metadata's keys merged in, as nitro-cli shows it.
	Metadata json.RawMessage `json:"Metadata,omitempty"`
}

// Describe turns a File and its Verify report into a Description.
func Describe(f *File, rep *Report) (*Description, error) {
	d := &Description{
		EifVersion:   f.Header.Version,
		Measurements: rep.Measurements,
		IsSigned:     rep.Signed,
		CheckCRC:     rep.CRCOK,
	}
	if rep.Signed {
		ok := rep.SignatureOK
		d.CheckSignature = &ok
	}
	if md := rep.Metadata; md != nil {
		d.ImageName, d.ImageVersion = md.ImageName, md.ImageVersion
		var b bytes.Buffer
		b.WriteByte('{')
		add := func(k string, v any) error {
			if b.Len() > 1 {
				b.WriteByte(',')
			}
			kb, _ := json.Marshal(k)
			vb, err := marshalNoEscape(v)
			if err != nil {
				return err
			}
			b.Write(kb)
			b.WriteByte(':')
			b.Write(vb)
			return nil
		}
		bm := md.Build
		for _, kv := range []struct {
			k string
			v any
		}{{"BuildTime", bm.BuildTime}, {"BuildTool", bm.BuildTool}, {"BuildToolVersion", bm.BuildToolVersion}, {"OperatingSystem", bm.OperatingSystem}, {"KernelVersion", bm.KernelVersion}, {"DockerInfo", rawOrNull(md.DockerInfo)}} {
			if err := add(kv.k, kv.v); err != nil {
				return nil, fmt.Errorf("describing eif metadata: %w", err)
			}
		}
		var custom map[string]json.RawMessage
		if len(md.CustomMetadata) > 0 && json.Unmarshal(md.CustomMetadata, &custom) == nil {
			for _, k := range sortedKeys(custom) {
				if err := add(k, custom[k]); err != nil {
					return nil, fmt.Errorf("describing eif metadata: %w", err)
				}
			}
		}
		b.WriteByte('}')
		d.Metadata = b.Bytes()
	}
	return d, nil
}

func rawOrNull(r json.RawMessage) json.RawMessage {
	if len(r) == 0 {
		return json.RawMessage("null")
	}
	return r
}

func sortedKeys(m map[string]json.RawMessage) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// MarshalIndent encodes v as nitro-cli prints JSON: indented by two spaces,
// without HTML escaping, with a final newline.
func MarshalIndent(v any) ([]byte, error) {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	e.SetIndent("", "  ")
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
