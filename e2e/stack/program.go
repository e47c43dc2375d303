package stack

import (
	"fmt"
	"os"
)

// Program is a TB for programs outside `go test` (the demo, the soak run): Fatal stops the body, and
// cleanups run in reverse order when it ends.
type Program struct{ cleanups []func() }

type fatal struct{ msg string }

func (p *Program) Helper()                      {}
func (p *Program) Cleanup(f func())             { p.cleanups = append(p.cleanups, f) }
func (p *Program) Errorf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...) }
func (p *Program) Fatalf(f string, args ...any) { panic(fatal{fmt.Sprintf(f, args...)}) }
func (p *Program) Fatal(args ...any)            { panic(fatal{fmt.Sprint(args...)}) }

// Run runs body, turning a Fatal into exit code 1 with its message, and runs the cleanups.
func (p *Program) Run(name string, body func() int) (code int) {
	defer func() {
		for i := len(p.cleanups) - 1; i >= 0; i-- {
			p.cleanups[i]()
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			fmt.Fprintf(os.Stderr, "%s: FAILED: %s\n", name, f.msg)
			code = 1
		}
	}()
	return body()
}
