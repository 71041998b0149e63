package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"sigs.k8s.io/gateway-api-inference-extension/apix/v1alpha2"
	errcommon "sigs.k8s.io/gateway-api-inference-extension/pkg/common/error"
	reqcommon "sigs.k8s.io/gateway-api-inference-extension/pkg/common/request"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/datalayer"
	fwkdl "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/datalayer"
	fwkrc "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/requestcontrol"
	fwkrh "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/requesthandling"
	fwksched "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/scheduling"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requestcontrol/test/responsereceived"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/test/filter"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/handlers"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/metadata"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/requestcontrol"
)

// Request headers that steer the picker (test hooks). Only the first is upstream's.
const (
	// headerSelection is the conformance EPP's header (GIE's header-based-testing-filter).
	headerSelection = "test-epp-endpoint-selection"
	// headerModelRewrite makes the picker rewrite the body's "model" (as x-gateway-model-name-rewrite does).
	headerModelRewrite = "test-epp-model-rewrite"
	// headerReject makes the picker refuse the request with that HTTP status (or a gRPC error).
	headerReject = "test-epp-reject"
	// headerDelay makes the picker wait that many milliseconds before answering.
	headerDelay = "test-epp-delay-ms"
	// headerTest is the header the picker adds to every scheduled request (--x-epp-test).
	headerTest = "x-epp-test"
)

// staticPool is the fixed endpoint list (--endpoints). It satisfies both the handler's and
// requestcontrol's Datastore interfaces, so upstream's subset-hint code (DatastoreEndpointCandidates)
// runs over it unchanged.
type staticPool struct {
	endpoints []fwkdl.Endpoint
}

func newStaticPool(list []string) (*staticPool, error) {
	p := &staticPool{}
	for i, raw := range list {
		host, port, err := net.SplitHostPort(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("--endpoints: %q is not ip:port: %v", raw, err)
		}
		if net.ParseIP(host) == nil {
			return nil, fmt.Errorf("--endpoints: %q: %q is not an IP address", raw, host)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("--endpoints: %q: bad port", raw)
		}
		p.endpoints = append(p.endpoints, fwkdl.NewEndpoint(&fwkdl.EndpointMetadata{
			PodName: fmt.Sprintf("static-%d", i),
			Address: host,
			Port:    port,
		}, nil))
	}
	return p, nil
}

func (p *staticPool) PoolGet() (*datalayer.EndpointPool, error) {
	return datalayer.NewEndpointPool("default", "static"), nil
}

func (p *staticPool) ObjectiveGet(string) *v1alpha2.InferenceObjective { return nil }

func (p *staticPool) ModelRewriteGet(string) (*v1alpha2.InferenceModelRewriteRule, string) {
	return nil, ""
}

func (p *staticPool) PodList(pred func(fwkdl.Endpoint) bool) []fwkdl.Endpoint {
	var out []fwkdl.Endpoint
	for _, e := range p.endpoints {
		if pred(e) {
			out = append(out, e)
		}
	}
	return out
}

// servedRecord is one finished exchange as the picker saw it (GET /served, and the log line).
type servedRecord struct {
	RequestID   string `json:"request_id"`
	Destination string `json:"destination"`
	Served      string `json:"served"`
}

// picker is the handlers.Director behind GIE's StreamingServer: everything on the wire (message
// order, header echo, envoy.lb metadata, 62,000-byte chunks, ImmediateResponse) is upstream's; this
// type only decides where a request goes and applies the test hooks.
type picker struct {
	pool            *staticPool
	candidates      *requestcontrol.DatastoreEndpointCandidates
	parser          fwkrh.Parser
	headerFilter    *filter.HeaderBasedTestingFilter
	servedVerifier  *responsereceived.DestinationEndpointServedVerifier
	testHeaderValue string
	repackage       bool
	rr              atomic.Uint64
	logf            func(format string, args ...any)
	mu              sync.Mutex
	served          []servedRecord
}

func (d *picker) next() uint64 { return d.rr.Add(1) - 1 }

func endpointString(e fwkdl.Endpoint) string {
	m := e.GetMetadata()
	return net.JoinHostPort(m.GetIPAddress(), m.GetPort())
}

// HandleRequest runs once the whole request body has arrived.
func (d *picker) HandleRequest(ctx context.Context, rc *handlers.RequestContext) (*handlers.RequestContext, error) {
	hdr := rc.Request.Headers
	if v := strings.TrimSpace(hdr[headerDelay]); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 0 {
			return rc, errcommon.Error{Code: errcommon.BadRequest, Msg: headerDelay + " must be a number of milliseconds"}
		}
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return rc, ctx.Err()
		}
	}
	if v := strings.TrimSpace(hdr[headerReject]); v != "" {
		return rc, rejection(v)
	}

	// The body, parsed as GIE's director parses it (400 when it is not an OpenAI request).
	parsed, err := d.parser.ParseRequest(ctx, rc.Request.RawBody, hdr)
	if err != nil {
		return rc, errcommon.Error{Code: errcommon.BadRequest, Msg: err.Error()}
	}
	if v := strings.TrimSpace(hdr[headerModelRewrite]); v != "" {
		rc.TargetModelName = v
	}
	if body, ok := parsed.Payload.(fwksched.PayloadMap); ok {
		model, ok := body["model"].(string)
		if !ok {
			return rc, errcommon.Error{Code: errcommon.BadRequest, Msg: "model not found in request body"}
		}
		rc.IncomingModelName = model
		if rc.TargetModelName == "" {
			rc.TargetModelName = model
		}
		if d.repackage || rc.TargetModelName != model {
			body["model"] = rc.TargetModelName
			raw, err := json.Marshal(map[string]any(body))
			if err != nil {
				return rc, errcommon.Error{Code: errcommon.Internal, Msg: "Error marshalling request body"}
			}
			rc.Request.RawBody = raw
		}
	}
	rc.RequestSize = len(rc.Request.RawBody)
	rc.SchedulingRequest = &fwksched.LLMRequest{
		RequestId:        hdr[reqcommon.RequestIdHeaderKey],
		TargetModel:      rc.TargetModelName,
		Body:             parsed,
		Headers:          hdr,
		RequestSizeBytes: rc.RequestSize,
	}

	// Candidates: the pool less what the subset hint excludes (upstream code, IP-only match).
	cands := d.candidates.Locate(ctx, rc.Request.Metadata)
	if len(cands) == 0 {
		return rc, errcommon.Error{Code: errcommon.ServiceUnavailable, Msg: "failed to find candidate endpoints for serving the request"}
	}
	var picked []fwkdl.Endpoint
	if _, ok := hdr[headerSelection]; ok {
		// The conformance EPP's rule: the header's endpoints, in its order, deduplicated by IP;
		// none matching is a scheduling failure (429).
		eps := make([]fwksched.Endpoint, len(cands))
		for i, c := range cands {
			eps[i] = fwksched.NewEndpoint(c.GetMetadata(), c.GetMetrics(), nil)
		}
		for _, e := range d.headerFilter.Filter(ctx, fwksched.NewCycleState(), rc.SchedulingRequest, eps) {
			picked = append(picked, fwkdl.NewEndpoint(e.GetMetadata(), e.GetMetrics()))
		}
		if len(picked) == 0 {
			return rc, errcommon.Error{Code: errcommon.ResourceExhausted, Msg: "failed to find target endpoint: no endpoint matches " + headerSelection}
		}
	} else if hasSubsetHint(rc.Request.Metadata) {
		picked = cands[:1]
	} else {
		picked = []fwkdl.Endpoint{cands[d.next()%uint64(len(cands))]}
	}
	list := make([]string, len(picked))
	for i, e := range picked {
		list[i] = endpointString(e)
	}
	rc.TargetPod = picked[0].GetMetadata()
	rc.TargetEndpoint = strings.Join(list, ",")
	if d.testHeaderValue != "" {
		// Headers in Request.Headers that are not system-owned are echoed in set_headers.
		hdr[headerTest] = d.testHeaderValue
	}
	return rc, nil
}

func hasSubsetHint(md map[string]any) bool {
	ns, ok := md[metadata.SubsetFilterNamespace].(map[string]any)
	if !ok {
		return false
	}
	_, ok = ns[metadata.SubsetFilterKey].([]any)
	return ok
}

// rejection maps test-epp-reject's value to the error GIE turns into an ImmediateResponse
// (or, for "grpc", into a gRPC error that ends the stream).
func rejection(v string) error {
	codes := map[string]string{
		"400": errcommon.BadRequest,
		"401": errcommon.Unauthorized,
		"403": errcommon.Forbidden,
		"404": errcommon.NotFound,
		"429": errcommon.ResourceExhausted,
		"500": errcommon.Internal,
		"503": errcommon.ServiceUnavailable,
	}
	if code, ok := codes[v]; ok {
		return errcommon.Error{Code: code, Msg: "rejected by " + headerReject}
	}
	if v == "grpc" {
		return errcommon.Error{Code: errcommon.Unknown, Msg: "stream failed by " + headerReject}
	}
	return errcommon.Error{Code: errcommon.BadRequest, Msg: headerReject + " must be 400, 401, 403, 404, 429, 500, 503 or grpc"}
}

// HandleResponseHeader runs on the response_headers message, whose metadata_context carries the
// served endpoint. GIE's conformance plugin copies it into x-conformance-test-served-endpoint.
func (d *picker) HandleResponseHeader(ctx context.Context, rc *handlers.RequestContext) *handlers.RequestContext {
	d.servedVerifier.ResponseHeader(ctx, rc.SchedulingRequest, &fwkrc.Response{
		RequestId:   rc.Request.Headers[reqcommon.RequestIdHeaderKey],
		Headers:     rc.Response.Headers,
		ReqMetadata: rc.Request.Metadata,
	}, rc.TargetPod)
	served := ""
	if lb, ok := rc.Request.Metadata[metadata.DestinationEndpointNamespace].(map[string]any); ok {
		served, _ = lb[metadata.DestinationEndpointServedKey].(string)
	}
	rec := servedRecord{
		RequestID:   rc.Request.Headers[reqcommon.RequestIdHeaderKey],
		Destination: rc.TargetEndpoint,
		Served:      served,
	}
	d.mu.Lock()
	d.served = append(d.served, rec)
	d.mu.Unlock()
	d.logf("served request_id=%s destination=%s served=%q", rec.RequestID, rec.Destination, rec.Served)
	return rc
}

func (d *picker) HandleResponseBody(_ context.Context, rc *handlers.RequestContext, _ bool) *handlers.RequestContext {
	return rc
}

// GetRandomEndpoint serves requests without a body (headers with end_of_stream): round-robin.
func (d *picker) GetRandomEndpoint() *fwkdl.EndpointMetadata {
	if len(d.pool.endpoints) == 0 {
		return nil
	}
	return d.pool.endpoints[d.next()%uint64(len(d.pool.endpoints))].GetMetadata()
}

func (d *picker) servedRecords() []servedRecord {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]servedRecord{}, d.served...)
}
