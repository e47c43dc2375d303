package policy

import (
	"strings"
	"unicode/utf8"
)

// A pattern is an Action or Resource string cut into tokens: literal characters, * (any run of characters),
// ? (any one character) and, in a 2012-10-17 document's resources, a policy variable such as ${aws:username},
// whose value only the request knows.
type pattern []token

type tokenKind uint8

const (
	literal  tokenKind = iota
	anyRun             // *
	anyOne             // ?
	variable           // ${...}
)

type token struct {
	kind tokenKind
	r    rune   // literal
	name string // variable, as written
}

// compile cuts s into tokens. Actions compare case-insensitively, so they are folded here once; variables are
// read only where the document's version substitutes them. ${*}, ${?} and ${$} are IAM's escapes for the literal
// characters.
func compile(s string, fold, variables bool) pattern {
	if fold {
		s = strings.ToLower(s)
	}
	var p pattern
	for i := 0; i < len(s); {
		if variables && strings.HasPrefix(s[i:], "${") {
			if end := strings.IndexByte(s[i:], '}'); end > 0 {
				name := s[i : i+end+1]
				switch name {
				case "${*}", "${?}", "${$}":
					p = append(p, token{kind: literal, r: rune(name[2])})
				default:
					p = append(p, token{kind: variable, name: name})
				}
				i += end + 1
				continue
			}
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch r {
		case '*':
			p = append(p, token{kind: anyRun})
		case '?':
			p = append(p, token{kind: anyOne})
		default:
			p = append(p, token{kind: literal, r: r})
		}
		i += size
	}
	return p
}

// hasVariable says whether the pattern's match depends on the request's context.
func (p pattern) hasVariable() bool {
	for _, t := range p {
		if t.kind == variable {
			return true
		}
	}
	return false
}

// match says whether the concrete string s (folded as the pattern was) is in the pattern, reading a variable as
// *: a match through a variable is only a possible one, which the caller learns from hasVariable.
func (p pattern) match(s string) bool {
	str := []rune(s)
	// Classic glob matching with one backtrack point: the last * seen and where in s it started.
	pi, si := 0, 0
	star, starSi := -1, 0
	for si < len(str) {
		if pi < len(p) {
			switch t := p[pi]; t.kind {
			case anyRun, variable:
				star, starSi = pi, si
				pi++
				continue
			case anyOne:
				pi++
				si++
				continue
			case literal:
				if t.r == str[si] {
					pi++
					si++
					continue
				}
			}
		}
		if star < 0 {
			return false
		}
		starSi++
		pi, si = star+1, starSi
	}
	for pi < len(p) && (p[pi].kind == anyRun || p[pi].kind == variable) {
		pi++
	}
	return pi == len(p)
}

// contains says whether every string inner can stand for is also in p, conservatively: inner's * and variables
// can only be absorbed by p's *, or a variable by the same variable (both take the request's one value); inner's
// ? by p's ? or *; a literal by the same literal, p's ? or p's *. A false answer may be wrong; a true one never is.
func (p pattern) contains(inner pattern) bool {
	// ok[i][j]: p[i:] contains inner[j:].
	ok := make([][]bool, len(p)+1)
	for i := range ok {
		ok[i] = make([]bool, len(inner)+1)
	}
	ok[len(p)][len(inner)] = true
	for i := len(p) - 1; i >= 0; i-- {
		for j := len(inner); j >= 0; j-- {
			c := p[i]
			if c.kind == anyRun {
				ok[i][j] = ok[i+1][j] || (j < len(inner) && ok[i][j+1])
				continue
			}
			if j == len(inner) {
				continue
			}
			in := inner[j]
			var fits bool
			switch c.kind {
			case anyOne:
				fits = in.kind == literal || in.kind == anyOne
			case literal:
				fits = in.kind == literal && in.r == c.r
			case variable:
				fits = in.kind == variable && in.name == c.name
			}
			ok[i][j] = fits && ok[i+1][j+1]
		}
	}
	return ok[0][0]
}
