package main

import "strconv"

// exitError ends the command with a specific exit code. With err nil nothing
// is printed (e.g. `nitropod run` passing on the app's exit status); with err
// set it is printed like any other error (e.g. a failed `eif describe` check).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return "exit status " + strconv.Itoa(e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }
