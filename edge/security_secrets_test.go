package edge

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/jwtauth/jwtattack"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/jaegertest"
	"github.com/petmesh/petmesh/internal/testutil/otlptest"
)

// secretsExercise sends requests that carry every kind of secret through a
// real edge: a login (right and wrong password), a token in the header and
// in the query string, a forged token, a malformed login body. It checks
// that no response body echoes a secret and returns the secrets.
func secretsExercise(t *testing.T, m *secMesh) (secrets []string, paths []string) {
	t.Helper()
	const wrongPW = "hunter2-wrong-password"
	tok := m.login("alice", "alice-pw")
	key, kid, err := jwtattack.ActiveKey(m.keysDir)
	if err != nil {
		t.Fatal(err)
	}
	cases, err := jwtattack.Cases(jwtattack.Config{Key: key, KID: kid, Issuer: m.issuer, Audience: "petmesh"})
	if err != nil {
		t.Fatal(err)
	}
	var forged string
	for _, c := range cases {
		if c.Name == "signature of another token" {
			forged = c.Token
		}
	}
	parts := strings.Split(tok, ".")
	secrets = []string{tok, parts[1], parts[2], "alice-pw", wrongPW, forged, strings.Split(forged, ".")[1]}

	type req struct {
		method, path, token string
		hdr                 map[string]string
		body                string
		want                int
	}
	json := map[string]string{"Content-Type": "application/json"}
	reqs := []req{
		{"POST", PathToken, "", json, `{"username":"alice","password":"` + wrongPW + `"}`, 401},
		{"POST", PathToken, "", json, `{"username":"alice","password":"` + wrongPW + `","extra":1}`, 400},
		{"POST", PathToken, "", json, `{"username":"alice","password":"` + wrongPW, 400},
		{"GET", "/pets/secrets-header", tok, nil, "", 200},
		{"GET", "/pets/secrets-query?access_token=" + tok, "", nil, "", 401},
		{"GET", "/pets/secrets-forged", forged, nil, "", 401},
		{"GET", "/pets/secrets-basic", "", map[string]string{"Authorization": "Basic YWxpY2U6YWxpY2UtcHc="}, "", 401}, // alice:alice-pw
	}
	for _, r := range reqs {
		code, b, err := m.do(r.method, r.path, r.token, r.hdr, strings.NewReader(r.body))
		if err != nil || code != r.want {
			t.Fatalf("%s %s: %d %s %v, want %d", r.method, r.path, code, b, err, r.want)
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Fatalf("%s %s: the response body holds a secret: %s", r.method, r.path, b)
			}
		}
		paths = append(paths, strings.SplitN(r.path, "?", 2)[0])
	}
	return append(secrets, "YWxpY2U6YWxpY2UtcHc="), paths
}

// TestSecuritySecretsNotLeaked runs a real edge at debug log level with an
// OTLP trace exporter pointed at a receiver, sends requests carrying
// tokens and passwords, and reads the edge's real log output and every
// exported span: no token, password or Authorization value appears in
// either (nor in any response body); the log and the spans do hold the
// requests (so the check is not vacuous). It also checks the signing key
// files the edge generated at its first start: directory 0700, files 0600.
func TestSecuritySecretsNotLeaked(t *testing.T) {
	otlp := otlptest.NewReceiver(t)
	m := startSecMesh(t, secOpts{
		edgeArgs: []string{"-log-level", "debug"},
		edgeEnv: []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + otlp.URL, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_TRACES_EXPORTER=otlp", "OTEL_BSP_SCHEDULE_DELAY=100"},
	})
	secrets, paths := secretsExercise(t, m)

	// The last request's access line and spans have arrived.
	last := paths[len(paths)-1]
	waitAccessLine(t, m, `"path":"`+last+`"`)
	tu.Eventually(t, 20*time.Second, func() error {
		for _, p := range paths {
			if !bytes.Contains(otlp.Raw(), []byte(p)) {
				return fmt.Errorf("no exported span for %s yet", p)
			}
		}
		return nil
	})
	log := m.edge.Output()
	if !strings.Contains(log, `"level":"DEBUG"`) && !strings.Contains(log, `"msg":"access"`) {
		t.Fatalf("the edge's log is empty:\n%s", log)
	}
	spans := otlp.Raw()
	for _, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("the edge's log holds a secret (%.12s…)", s)
		}
		if bytes.Contains(spans, []byte(s)) {
			t.Errorf("an exported span holds a secret (%.12s…)", s)
		}
	}
	for _, leak := range []string{"Bearer ey", "access_token=", `"password":`, `"client_secret":`} {
		if strings.Contains(log, leak) || bytes.Contains(spans, []byte(leak)) {
			t.Errorf("log or spans hold %q", leak)
		}
	}

	t.Run("signing keys generated at first start: dir 0700, files 0600", func(t *testing.T) {
		checkKeyFiles(t, m.keysDir)
	})
}

func checkKeyFiles(t *testing.T, dir string) {
	t.Helper()
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %04o, want 0700", st.Mode().Perm())
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) < 2 {
		t.Fatalf("key files %v %v; want the active and the next key", files, err)
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", filepath.Base(f), st.Mode().Perm())
		}
	}
}

// TestSecuritySecretsNotInJaeger is the same exercise with the edge
// exporting to a real Jaeger: the traces Jaeger stored for the edge hold
// no secret in any tag, log field or process tag.
func TestSecuritySecretsNotInJaeger(t *testing.T) {
	j := jaegertest.Start(t)
	m := startSecMesh(t, secOpts{edgeEnv: append(j.Env(), "OTEL_BSP_SCHEDULE_DELAY=100")})
	secrets, paths := secretsExercise(t, m)
	var stored []byte
	tu.Eventually(t, 30*time.Second, func() error {
		traces, err := j.Traces(context.Background(), "edge")
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "%+v", traces)
		for _, p := range paths {
			if !bytes.Contains(buf.Bytes(), []byte(p)) {
				return fmt.Errorf("no trace for %s in Jaeger yet", p)
			}
		}
		stored = buf.Bytes()
		return nil
	})
	for _, s := range secrets {
		if bytes.Contains(stored, []byte(s)) {
			t.Errorf("a trace stored in Jaeger holds a secret (%.12s…)", s)
		}
	}
}
