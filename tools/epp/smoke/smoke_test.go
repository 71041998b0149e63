// Package smoke runs fake-envoy against static-epp, both as built binaries, on free ports.
// EPP_TOOLS_BIN names a directory holding both (scripts/build-epp-tools.sh prints one); unset, the
// test builds them itself.
package smoke

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const pool = "127.0.0.1:8000,127.0.0.2:8000,127.0.0.3:8000"

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// bins returns the directory holding static-epp and fake-envoy.
func bins(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if d := os.Getenv("EPP_TOOLS_BIN"); d != "" {
			binDir = d
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		binDir, binErr = os.MkdirTemp("", "epp-tools-smoke-")
		if binErr != nil {
			return
		}
		cmd := exec.Command(goBin, "build", "-o", binDir+string(os.PathSeparator), "./cmd/static-epp", "./cmd/fake-envoy")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" && os.Getenv("EPP_TOOLS_BIN") == "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type epp struct {
	extProc, health, admin string
	mu                     sync.Mutex
	log                    bytes.Buffer
}

var listening = regexp.MustCompile(`listening ext_proc=(\S+) health=(\S+) admin=(\S+)`)

// startEPP runs static-epp on free ports and waits (with a deadline) for its listening line.
func startEPP(t *testing.T, args ...string) *epp {
	t.Helper()
	args = append([]string{"--port", "0", "--health-port", "0", "--admin-port", "0"}, args...)
	cmd := exec.Command(filepath.Join(bins(t), "static-epp"), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &epp{}
	ready := make(chan []string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			e.mu.Lock()
			e.log.WriteString(sc.Text() + "\n")
			e.mu.Unlock()
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				ready <- m
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("static-epp stderr:\n%s", e.stderr())
		}
	})
	select {
	case m := <-ready:
		e.extProc, e.health, e.admin = m[1], m[2], m[3]
	case <-done:
		t.Fatalf("static-epp exited before listening:\n%s", e.stderr())
	case <-time.After(30 * time.Second):
		t.Fatalf("static-epp did not report listening within 30 s:\n%s", e.stderr())
	}
	return e
}

func (e *epp) stderr() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.log.String()
}

type immediate struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

type result struct {
	Destination         string            `json:"destination"`
	MetadataDestination string            `json:"metadata_destination"`
	SetHeaders          map[string]string `json:"set_headers"`
	RemovedHeaders      []string          `json:"removed_headers"`
	ClearRouteCache     bool              `json:"clear_route_cache"`
	BodyBytes           int               `json:"body_bytes"`
	BodyChunks          int               `json:"body_chunks"`
	BodySHA256          string            `json:"body_sha256"`
	Model               string            `json:"model"`
	Immediate           *immediate        `json:"immediate"`
	Served              string            `json:"served"`
	ResponseSetHeaders  map[string]string `json:"response_set_headers"`
	ResponseBodyBytes   int               `json:"response_body_bytes"`
	ResponseBodySHA256  string            `json:"response_body_sha256"`
}

// fakeEnvoy runs one exchange; it returns the parsed stdout, or the exit error and stderr.
func fakeEnvoy(t *testing.T, e *epp, args ...string) (*result, error) {
	t.Helper()
	args = append([]string{"--epp", e.extProc}, args...)
	cmd := exec.Command(filepath.Join(bins(t), "fake-envoy"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.String())
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("fake-envoy printed no JSON object (%v): %q", err, stdout.String())
	}
	return &r, nil
}

func mustFakeEnvoy(t *testing.T, e *epp, args ...string) *result {
	t.Helper()
	r, err := fakeEnvoy(t, e, args...)
	if err != nil {
		t.Fatalf("fake-envoy: %v", err)
	}
	return r
}

const chatBody = `{"messages":[{"content":"hi","role":"user"}],"model":"m"}`

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// expectDestination checks the destination in both places and a conformant request direction.
func expectDestination(t *testing.T, r *result, want string) {
	t.Helper()
	if r.Immediate != nil {
		t.Fatalf("got an ImmediateResponse %+v, want destination %s", *r.Immediate, want)
	}
	if r.Destination != want || r.MetadataDestination != want {
		t.Fatalf("destination header %q, metadata %q; want %q in both", r.Destination, r.MetadataDestination, want)
	}
	if !r.ClearRouteCache {
		t.Error("clear_route_cache not set on the request_headers answer")
	}
}

func TestSmoke(t *testing.T) {
	e := startEPP(t, "--endpoints", pool, "--x-epp-test", "smoke")

	t.Run("health", func(t *testing.T) {
		conn, err := grpc.NewClient(e.health, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, svc := range []string{"", "liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"} {
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health %q: %v %v, want SERVING", svc, resp.GetStatus(), err)
			}
		}
	})

	t.Run("destination from header", func(t *testing.T) {
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", "test-epp-endpoint-selection=127.0.0.2:8000")
		expectDestination(t, r, "127.0.0.2:8000")
		if r.BodySHA256 != sha([]byte(chatBody)) {
			t.Errorf("body changed: %d bytes, want %q", r.BodyBytes, chatBody)
		}
	})

	t.Run("fallback list", func(t *testing.T) {
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", "test-epp-endpoint-selection=127.0.0.3,127.0.0.1:8000,127.0.0.3:8000")
		expectDestination(t, r, "127.0.0.3:8000,127.0.0.1:8000")
	})

	t.Run("header naming no endpoint is 429", func(t *testing.T) {
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", "test-epp-endpoint-selection=127.0.0.9")
		if r.Immediate == nil || r.Immediate.Status != 429 {
			t.Fatalf("immediate %+v, want status 429", r.Immediate)
		}
	})

	t.Run("subset hint", func(t *testing.T) {
		// The hint matches on IP only: 127.0.0.3:1 admits 127.0.0.3:8000.
		for range 3 {
			r := mustFakeEnvoy(t, e, "--body", chatBody, "--endpoints", "127.0.0.9:8000,127.0.0.3:1")
			expectDestination(t, r, "127.0.0.3:8000")
		}
		// The header picks among the hinted endpoints only.
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--endpoints", "127.0.0.2:8000",
			"--header", "test-epp-endpoint-selection=127.0.0.1,127.0.0.2")
		expectDestination(t, r, "127.0.0.2:8000")
		// An empty hint leaves no candidate: 503.
		r = mustFakeEnvoy(t, e, "--body", chatBody, "--endpoints", "")
		if r.Immediate == nil || r.Immediate.Status != 503 {
			t.Fatalf("immediate %+v, want status 503", r.Immediate)
		}
	})

	t.Run("round robin without hint or header", func(t *testing.T) {
		seen := map[string]bool{}
		for range 3 {
			r := mustFakeEnvoy(t, e, "--body", chatBody)
			seen[r.Destination] = true
			expectDestination(t, r, r.Destination)
		}
		if len(seen) != 3 {
			t.Fatalf("three requests went to %v, want all three endpoints", seen)
		}
	})

	t.Run("4 MiB body round trip", func(t *testing.T) {
		// Canonical JSON (what encoding/json writes), so GIE's re-serialization keeps every byte.
		const size = 4 << 20
		frame, _ := json.Marshal(map[string]any{"model": "m", "messages": []any{map[string]any{"role": "user", "content": ""}}})
		content := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", size/36+1)[:size-len(frame)]
		body, _ := json.Marshal(map[string]any{"model": "m", "messages": []any{map[string]any{"role": "user", "content": content}}})
		if len(body) != size {
			t.Fatalf("test body is %d bytes, want %d", len(body), size)
		}
		file := filepath.Join(t.TempDir(), "body.json")
		if err := os.WriteFile(file, body, 0o644); err != nil {
			t.Fatal(err)
		}
		r := mustFakeEnvoy(t, e, "--body-file", file, "--header", "test-epp-endpoint-selection=127.0.0.1:8000")
		expectDestination(t, r, "127.0.0.1:8000")
		if r.BodyBytes != size || r.BodySHA256 != sha(body) {
			t.Fatalf("body came back as %d bytes sha256 %s, want %d bytes sha256 %s", r.BodyBytes, r.BodySHA256, size, sha(body))
		}
		if want := (size + 61999) / 62000; r.BodyChunks != want {
			t.Errorf("body came back in %d chunks, want %d of at most 62,000 bytes", r.BodyChunks, want)
		}
		if r.SetHeaders["Content-Length"] != fmt.Sprint(size) {
			t.Errorf("Content-Length %q, want %d", r.SetHeaders["Content-Length"], size)
		}
	})

	t.Run("model rewrite", func(t *testing.T) {
		respBody := `{"choices":[],"model":"m2","usage":{"completion_tokens":1,"prompt_tokens":2}}`
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", "test-epp-model-rewrite=m2", "--response-body", respBody)
		if r.Model != "m2" {
			t.Fatalf("model %q after the rewrite, want m2", r.Model)
		}
		if r.SetHeaders["Content-Length"] != fmt.Sprint(r.BodyBytes) {
			t.Errorf("Content-Length %q, body %d bytes", r.SetHeaders["Content-Length"], r.BodyBytes)
		}
		// On the way back GIE names the model the client asked for.
		want := strings.Replace(respBody, `"model":"m2"`, `"model":"m"`, 1)
		if r.ResponseBodySHA256 != sha([]byte(want)) {
			t.Errorf("response body %d bytes, want %q", r.ResponseBodyBytes, want)
		}
	})

	t.Run("header mutation", func(t *testing.T) {
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", "x-client=1")
		if r.SetHeaders["x-epp-test"] != "smoke" {
			t.Errorf("set_headers %v lack x-epp-test: smoke", r.SetHeaders)
		}
		if r.SetHeaders["x-client"] != "1" || r.SetHeaders[":path"] != "/v1/chat/completions" {
			t.Errorf("set_headers %v do not echo the request headers", r.SetHeaders)
		}
		if len(r.RemovedHeaders) != 0 {
			t.Errorf("removed_headers %v, want none", r.RemovedHeaders)
		}
	})

	t.Run("rejections", func(t *testing.T) {
		for _, code := range []int{429, 503} {
			r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", fmt.Sprintf("test-epp-reject=%d", code))
			if r.Immediate == nil || r.Immediate.Status != code || !strings.HasPrefix(r.Immediate.Body, "inference error: ") {
				t.Fatalf("immediate %+v, want status %d", r.Immediate, code)
			}
			if r.Destination != "" || r.BodyBytes != 0 {
				t.Errorf("a rejection also gave destination %q, %d body bytes", r.Destination, r.BodyBytes)
			}
		}
		_, err := fakeEnvoy(t, e, "--body", chatBody, "--header", "test-epp-reject=grpc")
		if err == nil || !strings.Contains(err.Error(), "gRPC error") {
			t.Fatalf("test-epp-reject=grpc: %v, want a gRPC error and exit 1", err)
		}
	})

	t.Run("served endpoint reaches the EPP", func(t *testing.T) {
		r := mustFakeEnvoy(t, e, "--body", chatBody, "--header", "x-request-id=smoke-served",
			"--header", "test-epp-endpoint-selection=127.0.0.2:8000,127.0.0.3:8000", "--served", "127.0.0.3:8000")
		if got := r.ResponseSetHeaders["x-conformance-test-served-endpoint"]; got != "127.0.0.3:8000" {
			t.Errorf("x-conformance-test-served-endpoint %q, want 127.0.0.3:8000", got)
		}
		resp, err := http.Get("http://" + e.admin + "/served")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var recs []struct {
			RequestID   string `json:"request_id"`
			Destination string `json:"destination"`
			Served      string `json:"served"`
		}
		if err := json.Unmarshal(raw, &recs); err != nil {
			t.Fatalf("GET /served: %v: %s", err, raw)
		}
		found := false
		for _, rec := range recs {
			if rec.RequestID == "smoke-served" {
				found = rec.Served == "127.0.0.3:8000" && rec.Destination == "127.0.0.2:8000,127.0.0.3:8000"
			}
		}
		if !found {
			t.Errorf("GET /served %s lacks smoke-served with served 127.0.0.3:8000", raw)
		}
		if !strings.Contains(e.stderr(), `request_id=smoke-served destination=127.0.0.2:8000,127.0.0.3:8000 served="127.0.0.3:8000"`) {
			t.Errorf("no log line for smoke-served")
		}
	})

	t.Run("request without body", func(t *testing.T) {
		r := mustFakeEnvoy(t, e, "--method", "GET", "--path", "/v1/models")
		if r.Immediate != nil || r.Destination == "" || r.Destination != r.MetadataDestination {
			t.Fatalf("GET: %+v", r)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		_, err := fakeEnvoy(t, e, "--body", chatBody, "--header", "test-epp-delay-ms=5000", "--timeout", "300ms")
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("delayed EPP: %v, want a timeout and exit 1", err)
		}
	})
}

func TestSecureServing(t *testing.T) {
	e := startEPP(t, "--endpoints", pool, "--secure-serving")
	r := mustFakeEnvoy(t, e, "--tls", "--body", chatBody, "--header", "test-epp-endpoint-selection=127.0.0.1")
	expectDestination(t, r, "127.0.0.1:8000")
	if _, err := fakeEnvoy(t, e, "--body", chatBody, "--timeout", "5s"); err == nil {
		t.Fatal("plaintext against a TLS EPP succeeded")
	}
}
