package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// Exit codes, the same for every command.
const (
	exitOK = 0
	// exitInvalid: the input has problems, or what the command checks does
	// not hold (a contradicted prediction, a failed step).
	exitInvalid = 1
	// exitUnreadable: an input cannot be read or an output cannot be
	// written.
	exitUnreadable = 1
	// exitUsage: the command line is wrong.
	exitUsage = 2
)

// stdinName stands for standard input wherever a command reads a file.
const stdinName = "-"

// stdin is what a command reads for the file argument "-"; tests replace it.
var stdin io.Reader = os.Stdin

// commandLine is one command's arguments, parsed the same way for every
// command (validate, plan, predict, report, run, schema, version):
//   - flags may come before, between and after the file arguments; "--"
//     ends the flags;
//   - "-" is a file argument meaning standard input;
//   - -h, -help and --help print the command's usage to stdout, exit 0;
//   - an unknown flag, a bad flag value or more file arguments than the
//     command takes print what is wrong and the usage line, exit 2.
type commandLine struct {
	*flag.FlagSet
	name     string // the command, e.g. "plan"
	synopsis string // its arguments, e.g. "[FILE|-] [-o text|yaml]"
	about    string // what it does, for --help
	maxArgs  int    // most file arguments; -1 for any number
	stdout   io.Writer
	stderr   io.Writer
}

// newCommandLine returns the command line of command name; define its
// flags on it, then call parse.
func newCommandLine(name, synopsis, about string, maxArgs int, stdout, stderr io.Writer) *commandLine {
	fl := newFlags(name, stderr)
	fl.SetOutput(io.Discard) // parse reports errors itself, once
	return &commandLine{FlagSet: fl, name: name, synopsis: synopsis, about: about, maxArgs: maxArgs, stdout: stdout, stderr: stderr}
}

// parse parses args and returns the file arguments. When ok is false the
// command must return code at once: 0 after --help, 2 after a usage error.
func (c *commandLine) parse(args []string) (files []string, code int, ok bool) {
	files, err := parseArgs(c.FlagSet, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.printUsage(c.stdout)
		return nil, exitOK, false
	case err != nil:
		return nil, c.usageError("%v", err), false
	case c.maxArgs >= 0 && len(files) > c.maxArgs:
		extra := files[c.maxArgs]
		if c.maxArgs == 0 {
			return nil, c.usageError("unexpected argument %q: %s takes no arguments", extra, c.name), false
		}
		return nil, c.usageError("unexpected argument %q: %s takes at most %s", extra, c.name, plural(c.maxArgs, "file")), false
	}
	return files, exitOK, true
}

// usageError prints a command-line mistake and the usage line; it returns
// exitUsage.
func (c *commandLine) usageError(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "meshproof %s: %s\nusage: meshproof %s %s (meshproof %s --help for more)\n",
		c.name, fmt.Sprintf(format, args...), c.name, c.synopsis, c.name)
	return exitUsage
}

func (c *commandLine) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: meshproof %s %s\n\n%s\n", c.name, c.synopsis, c.about)
	hasFlags := false
	c.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "\nFlags:")
		c.SetOutput(w)
		c.PrintDefaults()
		c.SetOutput(io.Discard)
	}
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fl := flag.NewFlagSet("meshproof "+name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	return fl
}

// parseArgs parses flags that may come anywhere among the file arguments
// (`plan -o yaml FILE` and `plan FILE -o yaml`): parse, take one file
// argument, go on parsing what follows it. Everything after "--" is a file
// argument; "-" is one too (the flag package stops at it).
func parseArgs(fl *flag.FlagSet, args []string) (files []string, err error) {
	var afterDashes []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, afterDashes = args[:i], args[i+1:]
	}
	rest := args
	for {
		if err := fl.Parse(rest); err != nil {
			return nil, err
		}
		rest = fl.Args()
		if len(rest) == 0 {
			return append(files, afterDashes...), nil
		}
		files, rest = append(files, rest[0]), rest[1:]
	}
}

// readInput reads a file argument: "-" is standard input.
func readInput(path string) ([]byte, error) {
	if path == stdinName {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(path)
}

// inputName is how positions and messages name a file argument.
func inputName(path string) string {
	if path == stdinName {
		return "<stdin>"
	}
	return path
}

// unreadable reports an input that cannot be read, in the same words for
// every command, and returns exitUnreadable.
func unreadable(stderr io.Writer, path string, err error) int {
	fmt.Fprintf(stderr, "meshproof: cannot read %s: %s\n", inputName(path), readFailure(err))
	return exitUnreadable
}

// readFailure says why a read failed, without repeating the path.
func readFailure(err error) string {
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	case errors.As(err, &pe):
		return pe.Err.Error()
	}
	return strings.TrimPrefix(err.Error(), "read ")
}
