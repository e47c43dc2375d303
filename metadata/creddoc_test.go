package metadata

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func docCreds(keyID, token string, exp time.Time) Credentials {
	return Credentials{RoleName: "pod-role", AccessKeyID: keyID, SecretAccessKey: "secret-" + keyID, SessionToken: token,
		LastUpdated: exp.Add(-time.Hour), Expiration: exp, AccountID: "123456789012"}
}

// TestDocCacheServesOnlyItsOwnSet: a document comes back for the very set it was rendered from, in each of the three
// shapes; a set that differs in anything, even with the same access key ID, gets its own.
func TestDocCacheServesOnlyItsOwnSet(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var d docCache
	a := docCreds("ASIAAAAAAAAAAAAAAAAA", "token-a", now.Add(time.Hour))
	for _, kind := range []docKind{docStandard, docExtended, docContainer} {
		want := appendCredentialDocument(nil, &a, kind == docExtended)
		if kind == docContainer {
			want = appendContainerDocument(nil, &a)
		}
		for range 2 { // rendered, then kept
			if got := d.document(&a, kind, now); string(got) != string(want) {
				t.Errorf("document(kind %d) = %s, want %s", kind, got, want)
			}
		}
	}
	for name, other := range map[string]Credentials{
		"another token":      docCreds(a.AccessKeyID, "token-b", a.Expiration),
		"another expiration": docCreds(a.AccessKeyID, a.SessionToken, a.Expiration.Add(time.Minute)),
		"another role":       func() Credentials { c := a; c.RoleName = "other"; return c }(),
		"another account":    func() Credentials { c := a; c.AccountID = "210987654321"; return c }(),
	} {
		got := string(d.document(&other, docExtended, now))
		if want := string(appendCredentialDocument(nil, &other, true)); got != want {
			t.Errorf("%s: document = %s, want %s", name, got, want)
		}
		if got := string(d.document(&a, docExtended, now)); !strings.Contains(got, `"Token":"token-a"`) || strings.Contains(got, "token-b") {
			t.Errorf("%s: the first set's document is now %s", name, got)
		}
	}
}

// TestDocCacheIsBounded: a new set's document drops those of expired sets; a full cache of live ones is emptied
// rather than grown; replacing a key's document evicts nothing else.
func TestDocCacheIsBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var d docCache
	for i := range 10 {
		c := docCreds(fmt.Sprintf("ASIAOLD%013d", i), "t", now.Add(time.Minute))
		d.document(&c, docStandard, now)
	}
	later := now.Add(2 * time.Minute) // the ten have expired
	c := docCreds("ASIANEW0000000000000", "t", later.Add(time.Hour))
	d.document(&c, docStandard, later)
	if len(d.docs) != 1 {
		t.Errorf("after a new set once ten had expired: %d documents, want 1", len(d.docs))
	}
	for i := range maxDocs - 1 {
		c := docCreds(fmt.Sprintf("ASIALIVE%012d", i), "t", later.Add(time.Hour))
		d.document(&c, docStandard, later)
	}
	if len(d.docs) != maxDocs {
		t.Fatalf("%d documents kept, want %d", len(d.docs), maxDocs)
	}
	again := c
	again.SessionToken = "re-issued" // the same key ID: replaces its document, evicts nothing
	d.document(&again, docStandard, later)
	if len(d.docs) != maxDocs {
		t.Errorf("after replacing one document: %d kept, want %d", len(d.docs), maxDocs)
	}
	one := docCreds("ASIAONEMORE000000000", "t", later.Add(time.Hour))
	d.document(&one, docStandard, later)
	if len(d.docs) != 1 {
		t.Errorf("after one more on a cache full of live sets: %d documents, want 1 (emptied, then it)", len(d.docs))
	}
}

// TestServedDocumentFollowsTheProvider: the handler answers with the set the provider gives for this request, however
// often the previous one was served: a rotated set at once, and each pod its own.
func TestServedDocumentFollowsTheProvider(t *testing.T) {
	e := newTestEnv(t, nil)
	get := func(caller string) string {
		t.Helper()
		w := e.do(t, "GET", "/latest/meta-data/iam/security-credentials/"+podRole, caller, nil)
		if w.Code != 200 {
			t.Fatalf("GET from %s = %d", caller, w.Code)
		}
		return w.Body.String()
	}
	first := podCredentials()
	for range 3 {
		if got := get(podAddr); !strings.Contains(got, `"Token":"`+first.SessionToken+`"`) {
			t.Fatalf("document = %s, want the first set's", got)
		}
	}
	rotated := first
	rotated.AccessKeyID, rotated.SessionToken, rotated.Expiration = "ASIAPODEXAMPLE00002", "rotated-token", first.Expiration.Add(time.Hour)
	e.prov.set(podAddr, rotated)
	if got := get(podAddr); !strings.Contains(got, `"AccessKeyId":"ASIAPODEXAMPLE00002","SecretAccessKey":"pod/secret+key=EXAMPLE","Token":"rotated-token"`) {
		t.Errorf("after rotation, document = %s, want the rotated set's", got)
	}
	sameKey := rotated
	sameKey.SessionToken = "another-token-same-key-id"
	e.prov.set(podAddr, sameKey)
	if got := get(podAddr); !strings.Contains(got, `"Token":"another-token-same-key-id"`) {
		t.Errorf("a set sharing an access key ID with the last one: document = %s, want its own", got)
	}
	other := podCredentials()
	other.SessionToken = "other-pods-token" // same key ID as the first set, to a cache keyed on it alone
	e.prov.set(otherPodAddr, other)
	if got := get(otherPodAddr); !strings.Contains(got, `"Token":"other-pods-token"`) {
		t.Errorf("another pod's document = %s, want its own", got)
	}
}
