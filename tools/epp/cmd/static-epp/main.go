// Command static-epp is an endpoint picker (EPP) that needs no Kubernetes: the Gateway API Inference
// Extension's own ext_proc server (pkg/epp/handlers.StreamingServer, v1.5.0) in front of a fixed
// endpoint list and a small picker. The gateway's ext_proc client is tested against it.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	extProcPb "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/go-logr/stdr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requestcontrol/test/responsereceived"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requesthandling/parsers/openai"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/test/filter"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/handlers"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/requestcontrol"
)

const usage = `static-epp: an Inference Extension endpoint picker (ext_proc v3) over a fixed endpoint list.

The ext_proc server is GIE v1.5.0's own (pkg/epp/handlers): it waits for the whole request body
(FULL_DUPLEX_STREAMED), then answers the request headers with x-gateway-destination-endpoint (header)
and envoy.lb dynamic metadata, then streams the body back in 62,000-byte StreamedBodyResponses.

Where a request goes (decided once its body is complete):
  1. candidates = --endpoints, less those whose IP is not in the proxy's subset hint
     (metadata envoy.lb.subset_hint / x-gateway-destination-endpoint-subset); none left: 503
  2. request header test-epp-endpoint-selection: ip|ip:port[,...] (the conformance EPP's rule):
     the matching candidates in header order, one per IP, as the fallback list; none: 429
  3. else, if the proxy sent a subset hint: the first candidate
  4. else: round-robin over the candidates
  A request without a body (headers with end_of_stream) gets a round-robin endpoint; no endpoints: 500.

Test hooks (request headers):
  test-epp-model-rewrite: NAME   the body's "model" becomes NAME (so does upstream's
                                 x-gateway-model-name-rewrite); Content-Length follows
  test-epp-reject: CODE          ImmediateResponse with status CODE (400 401 403 404 429 500 503),
                                 or "grpc": the stream ends with a gRPC error (code Unknown)
  test-epp-delay-ms: N           wait N ms before answering (for the proxy's timeouts)
  Every scheduled request also gets the header x-epp-test: VALUE (--x-epp-test).

On the response path the served endpoint (metadata envoy.lb / x-gateway-destination-endpoint-served)
is copied into the response header x-conformance-test-served-endpoint (GIE's conformance plugin),
logged to stderr as "static-epp: served request_id=... destination=... served=..." and listed by
GET /served on --admin-port as a JSON array of {"request_id","destination","served"}.

Once listening, it prints one line to stderr:
  static-epp: listening ext_proc=ADDR health=ADDR admin=ADDR|off
(a port of 0 picks a free port; read the line to learn it).

Flags:
`

type config struct {
	address        string
	port           int
	healthPort     int
	adminPort      int
	endpoints      string
	testHeader     string
	repackage      bool
	disableSubset  bool
	secureServing  bool
	healthChecking bool
	verbosity      int
}

func main() {
	var c config
	fs := flag.NewFlagSet("static-epp", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.address, "address", "127.0.0.1", "IP address every listener binds to")
	fs.IntVar(&c.port, "port", 9002, "ext_proc gRPC port (GIE's --grpc-port); 0 picks a free one")
	fs.IntVar(&c.healthPort, "health-port", 9003, "grpc.health.v1 port (GIE's --grpc-health-port); 0 picks a free one")
	fs.IntVar(&c.adminPort, "admin-port", -1, "HTTP port for GET /served; -1 turns it off, 0 picks a free one")
	fs.StringVar(&c.endpoints, "endpoints", "", "the pool: comma-separated ip:port list")
	fs.StringVar(&c.testHeader, "x-epp-test", "static-epp", "value of the x-epp-test header added to every scheduled request; empty adds none")
	fs.BoolVar(&c.repackage, "repackage-body", true, "re-serialize every JSON request body as GIE's director does (encoding/json: keys sorted, no whitespace); false keeps the bytes unless the model is rewritten")
	fs.BoolVar(&c.disableSubset, "disable-endpoint-subset-filter", false, "ignore the proxy's subset hint (GIE's flag of the same name)")
	fs.BoolVar(&c.secureServing, "secure-serving", false, "serve ext_proc over TLS with a self-signed certificate (GIE's default is true)")
	fs.BoolVar(&c.healthChecking, "health-checking", false, "also serve grpc.health.v1 on the ext_proc port (GIE's flag of the same name)")
	fs.IntVar(&c.verbosity, "v", 0, "verbosity of GIE's own logs on stderr (2 default, 3 verbose, 4 debug, 5 trace); errors always show")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "static-epp: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "static-epp: %v\n", err)
		os.Exit(1)
	}
}

func run(c config) error {
	logger := log.New(os.Stderr, "static-epp: ", 0)
	stdr.SetVerbosity(c.verbosity)
	ctrllog.SetLogger(stdr.New(log.New(os.Stderr, "static-epp: gie: ", 0)))

	var list []string
	if strings.TrimSpace(c.endpoints) != "" {
		list = strings.Split(c.endpoints, ",")
	}
	pool, err := newStaticPool(list)
	if err != nil {
		return err
	}
	p := &picker{
		pool:            pool,
		candidates:      requestcontrol.NewDatastoreEndpointCandidates(pool, requestcontrol.WithDisableEndpointSubsetFilter(c.disableSubset)),
		parser:          openai.NewOpenAIParser(),
		headerFilter:    filter.NewHeaderBasedTestingFilter(),
		servedVerifier:  responsereceived.NewDestinationEndpointServedVerifier(),
		testHeaderValue: c.testHeader,
		repackage:       c.repackage,
		logf:            logger.Printf,
	}

	var opts []grpc.ServerOption
	if c.secureServing {
		cert, err := selfSignedCert(c.address)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	}
	extProc := grpc.NewServer(opts...)
	extProcPb.RegisterExternalProcessorServer(extProc, handlers.NewStreamingServer(pool, p, openai.NewOpenAIParser()))

	healthSrv := grpc.NewServer()
	hs := health.NewServer()
	for _, name := range []string{"", "liveness", "readiness", extProcPb.ExternalProcessor_ServiceDesc.ServiceName} {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(healthSrv, hs)
	if c.healthChecking {
		healthpb.RegisterHealthServer(extProc, hs)
	}

	extL, err := net.Listen("tcp", net.JoinHostPort(c.address, strconv.Itoa(c.port)))
	if err != nil {
		return err
	}
	healthL, err := net.Listen("tcp", net.JoinHostPort(c.address, strconv.Itoa(c.healthPort)))
	if err != nil {
		return err
	}
	errs := make(chan error, 3)
	go func() { errs <- extProc.Serve(extL) }()
	go func() { errs <- healthSrv.Serve(healthL) }()

	adminAddr := "off"
	var admin *http.Server
	if c.adminPort >= 0 {
		adminL, err := net.Listen("tcp", net.JoinHostPort(c.address, strconv.Itoa(c.adminPort)))
		if err != nil {
			return err
		}
		adminAddr = adminL.Addr().String()
		mux := http.NewServeMux()
		mux.HandleFunc("GET /served", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(p.servedRecords())
		})
		admin = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- admin.Serve(adminL) }()
	}
	logger.Printf("listening ext_proc=%s health=%s admin=%s", extL.Addr(), healthL.Addr(), adminAddr)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	extProc.Stop()
	healthSrv.Stop()
	if admin != nil {
		_ = admin.Close()
	}
	return nil
}

// selfSignedCert makes a throwaway ECDSA certificate, as GIE does when --cert-path is unset.
func selfSignedCert(address string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{Organization: []string{"static-epp"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
	}
	if ip := net.ParseIP(address); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
