// Command fake-envoy plays Envoy's ext_proc filter, as the Inference Extension configures it
// (headers SEND, bodies FULL_DUPLEX_STREAMED), for one HTTP request against any endpoint picker,
// checks the EPP's side of the exchange and prints what it answered as one JSON object.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extProcPb "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	lbNamespace     = "envoy.lb"
	subsetNamespace = "envoy.lb.subset_hint"
	destinationKey  = "x-gateway-destination-endpoint"
	subsetKey       = "x-gateway-destination-endpoint-subset"
	servedKey       = "x-gateway-destination-endpoint-served"
	maxChunk        = 64 * 1024
)

const usage = `fake-envoy: one HTTP request through an endpoint picker, playing Envoy's ext_proc client.

The exchange (one Process stream), as Envoy runs it with the Inference Extension's settings:
  -> request_headers (a HeaderMap with :method :path :authority :scheme, content-type,
     content-length and every --header; end_of_stream when there is no body)
  -> request_body chunks of at most --chunk-size bytes, end_of_stream on the last
     (sent while answers are read: full duplex). Every request message carries the subset hint
     (metadata envoy.lb.subset_hint) when --endpoints is given.
  <- request_headers answer (destination in the x-gateway-destination-endpoint header and/or
     envoy.lb dynamic metadata), then request_body StreamedBodyResponses up to end_of_stream,
     or an ImmediateResponse at any point (then the exchange ends there)
  -> response_headers (:status, content-type, every --response-header) with metadata
     envoy.lb {x-gateway-destination-endpoint-served: --served}, then --response-body in chunks
  <- response_headers answer, then response_body StreamedBodyResponses up to end_of_stream
  -> half-close; the EPP must then end the stream cleanly.

It fails (exit 1, a message on stderr, nothing on stdout) on a gRPC error, a message out of that
order, a destination header and metadata that differ or are both missing, a request body answer
that is not a StreamedBodyResponse or has a chunk over 64 KiB, a stream not closed after the
half-close, or --timeout. Exit 2: bad flags. Exit 0: a conformant exchange, an ImmediateResponse
included, and one JSON object on stdout:
  {"destination": header value, "metadata_destination": envoy.lb metadata value,
   "set_headers": {request header mutation}, "removed_headers": [...], "clear_route_cache": bool,
   "body_bytes": N, "body_chunks": N, "body_sha256": hex, "model": "body's model or empty",
   "immediate": null or {"status": N, "body": "...", "headers": {...}, "details": "..."},
   "served": "what was sent as served, empty if not reached",
   "response_set_headers": {...}, "response_removed_headers": [...],
   "response_body_bytes": N, "response_body_sha256": hex}

Flags:
`

// repeated collects a repeatable k=v flag, keeping order.
type repeated struct{ kv [][2]string }

func (r *repeated) String() string { return "" }
func (r *repeated) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want name=value, got %q", s)
	}
	r.kv = append(r.kv, [2]string{strings.ToLower(k), v})
	return nil
}

type config struct {
	epp          string
	useTLS       bool
	endpoints    *string // nil: no subset hint
	headers      repeated
	method, path string
	authority    string
	body         []byte
	chunk        int
	served       *string // nil: the destination's first entry
	status       int
	respHeaders  repeated
	respBody     []byte
	skipResponse bool
	bodyOut      string
	timeout      time.Duration
}

// Immediate is an ImmediateResponse as printed.
type Immediate struct {
	Status  int               `json:"status"`
	Body    string            `json:"body"`
	Headers map[string]string `json:"headers"`
	Details string            `json:"details"`
}

// Result is the JSON object printed on stdout. Field order and names are stable.
type Result struct {
	Destination            string            `json:"destination"`
	MetadataDestination    string            `json:"metadata_destination"`
	SetHeaders             map[string]string `json:"set_headers"`
	RemovedHeaders         []string          `json:"removed_headers"`
	ClearRouteCache        bool              `json:"clear_route_cache"`
	BodyBytes              int               `json:"body_bytes"`
	BodyChunks             int               `json:"body_chunks"`
	BodySHA256             string            `json:"body_sha256"`
	Model                  string            `json:"model"`
	Immediate              *Immediate        `json:"immediate"`
	Served                 string            `json:"served"`
	ResponseSetHeaders     map[string]string `json:"response_set_headers"`
	ResponseRemovedHeaders []string          `json:"response_removed_headers"`
	ResponseBodyBytes      int               `json:"response_body_bytes"`
	ResponseBodySHA256     string            `json:"response_body_sha256"`
}

func main() {
	c, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "fake-envoy: %v\n", err)
		os.Exit(2)
	}
	res, err := exchange(c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-envoy: %v\n", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("fake-envoy", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.epp, "epp", "127.0.0.1:9002", "the EPP's ext_proc address, host:port")
	fs.BoolVar(&c.useTLS, "tls", false, "TLS without certificate verification, as Envoy talks to a stock EPP")
	endpoints := fs.String("endpoints", "", "subset hint: comma-separated ip:port list; given empty, an empty list; not given, no hint")
	fs.Var(&c.headers, "header", "request header name=value (repeatable)")
	fs.StringVar(&c.method, "method", "POST", ":method")
	fs.StringVar(&c.path, "path", "/v1/chat/completions", ":path")
	fs.StringVar(&c.authority, "authority", "localhost", ":authority")
	body := fs.String("body", "", "request body")
	bodyFile := fs.String("body-file", "", "request body from a file (- for stdin)")
	fs.IntVar(&c.chunk, "chunk-size", maxChunk, "request and response body chunk size, 1 to 65536")
	served := fs.String("served", "", "endpoint reported as served on the response headers; not given, the destination's first entry; given empty, no envoy.lb metadata")
	fs.IntVar(&c.status, "status", 200, "response :status")
	fs.Var(&c.respHeaders, "response-header", "response header name=value (repeatable; content-type defaults to application/json)")
	respBody := fs.String("response-body", "", "response body streamed back to the EPP")
	fs.BoolVar(&c.skipResponse, "skip-response", false, "stop after the request direction (no response headers or body)")
	fs.StringVar(&c.bodyOut, "body-out", "", "write the request body the EPP streamed back to this file")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "deadline for the whole exchange")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["endpoints"] {
		c.endpoints = endpoints
	}
	if set["served"] {
		c.served = served
	}
	switch {
	case set["body"] && set["body-file"]:
		return nil, errors.New("--body and --body-file exclude each other")
	case set["body-file"] && *bodyFile == "-":
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return nil, err
		}
		c.body = b
	case set["body-file"]:
		b, err := os.ReadFile(*bodyFile)
		if err != nil {
			return nil, err
		}
		c.body = b
	default:
		c.body = []byte(*body)
	}
	c.respBody = []byte(*respBody)
	if c.chunk < 1 || c.chunk > maxChunk {
		return nil, fmt.Errorf("--chunk-size must be 1 to %d", maxChunk)
	}
	if c.timeout <= 0 {
		return nil, errors.New("--timeout must be positive")
	}
	return c, nil
}

func headerMap(kv [][2]string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{}}
	for _, h := range kv {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: h[0], RawValue: []byte(h[1])})
	}
	return m
}

func headerValue(h *corev3.HeaderValue) string {
	if len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}

func splitList(s string) []any {
	out := []any{}
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// stream wraps the Process stream with the stage being waited for, for error messages.
type stream struct {
	extProcPb.ExternalProcessor_ProcessClient
	ctx     context.Context
	timeout time.Duration
}

func (s *stream) recv(waiting string) (*extProcPb.ProcessingResponse, error) {
	r, err := s.Recv()
	if err == nil {
		return r, nil
	}
	if s.ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded {
		return nil, fmt.Errorf("timeout (%s) waiting for %s", s.timeout, waiting)
	}
	if err == io.EOF {
		return nil, fmt.Errorf("the EPP closed the stream while fake-envoy waited for %s", waiting)
	}
	return nil, fmt.Errorf("gRPC error while waiting for %s: %v", waiting, err)
}

func kind(r *extProcPb.ProcessingResponse) string {
	switch r.Response.(type) {
	case *extProcPb.ProcessingResponse_RequestHeaders:
		return "a request_headers answer"
	case *extProcPb.ProcessingResponse_RequestBody:
		return "a request_body answer"
	case *extProcPb.ProcessingResponse_RequestTrailers:
		return "a request_trailers answer"
	case *extProcPb.ProcessingResponse_ResponseHeaders:
		return "a response_headers answer"
	case *extProcPb.ProcessingResponse_ResponseBody:
		return "a response_body answer"
	case *extProcPb.ProcessingResponse_ResponseTrailers:
		return "a response_trailers answer"
	case *extProcPb.ProcessingResponse_ImmediateResponse:
		return "an ImmediateResponse"
	default:
		return fmt.Sprintf("a %T", r.Response)
	}
}

func immediate(ir *extProcPb.ImmediateResponse) *Immediate {
	im := &Immediate{
		Status:  int(ir.GetStatus().GetCode()),
		Body:    string(ir.GetBody()),
		Headers: map[string]string{},
		Details: ir.GetDetails(),
	}
	for _, h := range ir.GetHeaders().GetSetHeaders() {
		im.Headers[h.GetHeader().GetKey()] = headerValue(h.GetHeader())
	}
	return im
}

// streamedBody collects StreamedBodyResponses (one per answer) up to end_of_stream.
func streamedBody(first *extProcPb.CommonResponse, next func() (*extProcPb.CommonResponse, *Immediate, error), what string) ([]byte, int, *Immediate, error) {
	var body []byte
	chunks := 0
	cr := first
	for {
		sr := cr.GetBodyMutation().GetStreamedResponse()
		if sr == nil {
			return nil, 0, nil, fmt.Errorf("%s answer without body_mutation.streamed_response (required in FULL_DUPLEX_STREAMED mode): %v", what, cr)
		}
		if len(sr.GetBody()) > maxChunk {
			return nil, 0, nil, fmt.Errorf("%s chunk of %d bytes, over 64 KiB", what, len(sr.GetBody()))
		}
		body = append(body, sr.GetBody()...)
		chunks++
		if sr.GetEndOfStream() {
			return body, chunks, nil, nil
		}
		var im *Immediate
		var err error
		cr, im, err = next()
		if err != nil || im != nil {
			return nil, 0, im, err
		}
	}
}

func exchange(c *config) (*Result, error) {
	creds := insecure.NewCredentials()
	if c.useTLS {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	}
	conn, err := grpc.NewClient(c.epp, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	pc, err := extProcPb.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening the Process stream: %v", err)
	}
	st := &stream{ExternalProcessor_ProcessClient: pc, ctx: ctx, timeout: c.timeout}
	res := &Result{SetHeaders: map[string]string{}, RemovedHeaders: []string{},
		ResponseSetHeaders: map[string]string{}, ResponseRemovedHeaders: []string{}}

	var reqMD *corev3.Metadata
	if c.endpoints != nil {
		hint, err := structpb.NewStruct(map[string]any{subsetKey: splitList(*c.endpoints)})
		if err != nil {
			return nil, err
		}
		reqMD = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{subsetNamespace: hint}}
	}

	// Request direction, sent while the answers are read (full duplex).
	hdrs := [][2]string{{":method", c.method}, {":path", c.path}, {":authority", c.authority}, {":scheme", "http"}}
	if len(c.body) > 0 {
		hdrs = append(hdrs, [2]string{"content-type", "application/json"}, [2]string{"content-length", strconv.Itoa(len(c.body))})
	}
	hdrs = mergeHeaders(hdrs, c.headers.kv)
	sent := make(chan error, 1)
	go func() {
		err := st.Send(&extProcPb.ProcessingRequest{MetadataContext: reqMD, Request: &extProcPb.ProcessingRequest_RequestHeaders{
			RequestHeaders: &extProcPb.HttpHeaders{Headers: headerMap(hdrs), EndOfStream: len(c.body) == 0}}})
		for off := 0; err == nil && off < len(c.body); off += c.chunk {
			end := min(off+c.chunk, len(c.body))
			err = st.Send(&extProcPb.ProcessingRequest{MetadataContext: reqMD, Request: &extProcPb.ProcessingRequest_RequestBody{
				RequestBody: &extProcPb.HttpBody{Body: c.body[off:end], EndOfStream: end == len(c.body)}}})
		}
		sent <- err
	}()

	r, err := st.recv("the request_headers answer")
	if err != nil {
		return nil, err
	}
	if ir := r.GetImmediateResponse(); ir != nil {
		res.Immediate = immediate(ir)
		res.BodySHA256, res.ResponseBodySHA256 = sha(nil), sha(nil)
		return res, nil
	}
	hr := r.GetRequestHeaders()
	if hr == nil {
		return nil, fmt.Errorf("got %s before the request_headers answer", kind(r))
	}
	cr := hr.GetResponse()
	for _, h := range cr.GetHeaderMutation().GetSetHeaders() {
		res.SetHeaders[h.GetHeader().GetKey()] = headerValue(h.GetHeader())
		if strings.EqualFold(h.GetHeader().GetKey(), destinationKey) {
			res.Destination = headerValue(h.GetHeader())
		}
	}
	res.RemovedHeaders = append(res.RemovedHeaders, cr.GetHeaderMutation().GetRemoveHeaders()...)
	res.ClearRouteCache = cr.GetClearRouteCache()
	if lb := r.GetDynamicMetadata().GetFields()[lbNamespace].GetStructValue(); lb != nil {
		res.MetadataDestination = lb.GetFields()[destinationKey].GetStringValue()
	}
	switch {
	case res.Destination == "" && res.MetadataDestination == "":
		return nil, fmt.Errorf("the request_headers answer names no destination (neither the %s header nor %s metadata)", destinationKey, lbNamespace)
	case res.Destination != "" && res.MetadataDestination != "" && res.Destination != res.MetadataDestination:
		return nil, fmt.Errorf("destination header %q and %s metadata %q differ", res.Destination, lbNamespace, res.MetadataDestination)
	}
	dest := res.MetadataDestination
	if dest == "" {
		dest = res.Destination
	}

	// The request body as the EPP streams it back (it replaces the original).
	var body []byte
	if len(c.body) > 0 {
		r, err := st.recv("the request body answers")
		if err != nil {
			return nil, err
		}
		if ir := r.GetImmediateResponse(); ir != nil {
			res.Immediate = immediate(ir)
			res.BodySHA256, res.ResponseBodySHA256 = sha(nil), sha(nil)
			return res, nil
		}
		if r.GetRequestBody() == nil {
			return nil, fmt.Errorf("got %s where a request_body answer was due", kind(r))
		}
		var im *Immediate
		body, res.BodyChunks, im, err = streamedBody(r.GetRequestBody().GetResponse(), func() (*extProcPb.CommonResponse, *Immediate, error) {
			r, err := st.recv("the rest of the request body answers")
			if err != nil {
				return nil, nil, err
			}
			if ir := r.GetImmediateResponse(); ir != nil {
				return nil, immediate(ir), nil
			}
			if r.GetRequestBody() == nil {
				return nil, nil, fmt.Errorf("got %s before the request body answers ended", kind(r))
			}
			return r.GetRequestBody().GetResponse(), nil, nil
		}, "request body")
		if err != nil {
			return nil, err
		}
		if im != nil {
			res.Immediate = im
			res.BodySHA256, res.ResponseBodySHA256 = sha(nil), sha(nil)
			return res, nil
		}
	}
	res.BodyBytes, res.BodySHA256 = len(body), sha(body)
	var parsed struct {
		Model string `json:"model"`
	}
	if json.Unmarshal(body, &parsed) == nil {
		res.Model = parsed.Model
	}
	if c.bodyOut != "" {
		if err := os.WriteFile(c.bodyOut, body, 0o644); err != nil {
			return nil, err
		}
	}
	select {
	case err := <-sent:
		if err != nil {
			return nil, fmt.Errorf("sending the request: %v", err)
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("timeout (%s) sending the request body", c.timeout)
	}

	res.ResponseBodySHA256 = sha(nil)
	if !c.skipResponse {
		if err := response(c, st, res, dest); err != nil {
			return nil, err
		}
	}

	// Done: half-close; the EPP must end the stream cleanly.
	if err := st.CloseSend(); err != nil {
		return nil, err
	}
	r, err = st.Recv()
	switch {
	case err == io.EOF:
		return res, nil
	case err == nil:
		return nil, fmt.Errorf("got %s after the exchange ended", kind(r))
	case ctx.Err() != nil:
		return nil, fmt.Errorf("timeout (%s): the EPP did not end the stream after fake-envoy half-closed it", c.timeout)
	default:
		return nil, fmt.Errorf("the EPP ended the stream with an error: %v", err)
	}
}

// response runs the response direction: headers carrying the served endpoint, then the body.
func response(c *config, st *stream, res *Result, dest string) error {
	served := strings.TrimSpace(strings.Split(dest, ",")[0])
	if c.served != nil {
		served = *c.served
	}
	var md *corev3.Metadata
	if served != "" {
		lb, err := structpb.NewStruct(map[string]any{servedKey: served})
		if err != nil {
			return err
		}
		md = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{lbNamespace: lb}}
	}
	res.Served = served
	hdrs := mergeHeaders([][2]string{{":status", strconv.Itoa(c.status)}, {"content-type", "application/json"}}, c.respHeaders.kv)
	// Sent while the answers are read: a streaming (SSE) EPP answers every chunk as it comes, a
	// non-streaming one only once the whole body is in.
	sent := make(chan error, 1)
	go func() {
		err := st.Send(&extProcPb.ProcessingRequest{MetadataContext: md, Request: &extProcPb.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &extProcPb.HttpHeaders{Headers: headerMap(hdrs), EndOfStream: len(c.respBody) == 0}}})
		for off := 0; err == nil && off < len(c.respBody); off += c.chunk {
			end := min(off+c.chunk, len(c.respBody))
			err = st.Send(&extProcPb.ProcessingRequest{MetadataContext: md, Request: &extProcPb.ProcessingRequest_ResponseBody{
				ResponseBody: &extProcPb.HttpBody{Body: c.respBody[off:end], EndOfStream: end == len(c.respBody)}}})
		}
		sent <- err
	}()
	if err := recvResponse(c, st, res); err != nil || res.Immediate != nil {
		return err
	}
	select {
	case err := <-sent:
		if err != nil {
			return fmt.Errorf("sending the response: %v", err)
		}
		return nil
	case <-st.ctx.Done():
		return fmt.Errorf("timeout (%s) sending the response body", c.timeout)
	}
}

func recvResponse(c *config, st *stream, res *Result) error {
	r, err := st.recv("the response_headers answer")
	if err != nil {
		return err
	}
	if ir := r.GetImmediateResponse(); ir != nil {
		res.Immediate = immediate(ir)
		return nil
	}
	hr := r.GetResponseHeaders()
	if hr == nil {
		return fmt.Errorf("got %s where the response_headers answer was due", kind(r))
	}
	for _, h := range hr.GetResponse().GetHeaderMutation().GetSetHeaders() {
		res.ResponseSetHeaders[h.GetHeader().GetKey()] = headerValue(h.GetHeader())
	}
	res.ResponseRemovedHeaders = append(res.ResponseRemovedHeaders, hr.GetResponse().GetHeaderMutation().GetRemoveHeaders()...)
	if len(c.respBody) == 0 {
		return nil
	}
	next := func() (*extProcPb.CommonResponse, *Immediate, error) {
		r, err := st.recv("the response body answers")
		if err != nil {
			return nil, nil, err
		}
		if ir := r.GetImmediateResponse(); ir != nil {
			return nil, immediate(ir), nil
		}
		if r.GetResponseBody() == nil {
			return nil, nil, fmt.Errorf("got %s where a response_body answer was due", kind(r))
		}
		return r.GetResponseBody().GetResponse(), nil, nil
	}
	first, im, err := next()
	if err != nil || im != nil {
		res.Immediate = im
		return err
	}
	body, _, im, err := streamedBody(first, next, "response body")
	if err != nil || im != nil {
		res.Immediate = im
		return err
	}
	res.ResponseBodyBytes, res.ResponseBodySHA256 = len(body), sha(body)
	return nil
}

// mergeHeaders appends extra headers, an extra one replacing a default of the same name.
func mergeHeaders(defaults, extra [][2]string) [][2]string {
	out := [][2]string{}
	for _, d := range defaults {
		replaced := false
		for _, e := range extra {
			if e[0] == d[0] {
				replaced = true
			}
		}
		if !replaced {
			out = append(out, d)
		}
	}
	return append(out, extra...)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
