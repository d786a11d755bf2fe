package s3

import (
	"github.com/nitropod/nitropod/contract"
)

// Location is an object in a bucket, written s3://bucket/key. The syntax is
// the contract package's, shared with the webhook that admits the
// imageLocation annotation.
type Location = contract.S3Location

// ParseLocation parses "s3://bucket/key" (contract.ParseS3Location) and
// reports a bad value as an *Error of KindInvalidLocation.
func ParseLocation(s string) (Location, error) {
	l, err := contract.ParseS3Location(s)
	if err != nil {
		return Location{}, &Error{Kind: KindInvalidLocation, Location: s, Msg: err.Error()}
	}
	return l, nil
}
