//! The vocabulary of the decision step: the request [`Head`] it reads and the [`Decision`] it
//! returns, with what a pool decision keeps for later ([`InferenceInfo`], [`Dispatch`]). Types
//! only; [`super::route`] and [`super::pool::decide`] make decisions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use plugins::{EndpointView, RequestView};

use crate::headers::ClientHints;
use crate::proxy::error::ClientError;
use crate::snapshot::picker::PickerBinding;
use crate::snapshot::routes::RequestParts;
use crate::snapshot::{Endpoint, EndpointSample, Pool, ServiceBackend};

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The local port the request arrived on.
    pub port: u16,
    /// Host, lowercase, without the port.
    pub host: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers, control headers already stripped.
    pub headers: &'a HeaderMap,
    /// Whether the request may have a body. The proxy first says it may, and asks Pingora's
    /// framing only when a route needs to know (body-based routing).
    pub has_body: bool,
    /// The request id.
    pub request_id: &'a str,
    /// The client hints read from the headers before they were removed.
    pub hints: &'a ClientHints,
}

impl<'a> Head<'a> {
    pub(super) fn parts(&self) -> RequestParts<'a> {
        RequestParts {
            method: self.method,
            path: self.path,
            query: self.query,
            host: self.host,
            headers: self.headers,
        }
    }
}

/// Which kind of backend serves a request (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// No backend: the gateway answered (404, 500, ...).
    #[default]
    None,
    /// A Service.
    Service,
    /// An InferencePool.
    Pool,
}

impl BackendKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::None => "none",
            BackendKind::Service => "service",
            BackendKind::Pool => "pool",
        }
    }
}

/// The route entry a request matched.
#[derive(Debug, Clone)]
pub struct MatchedRoute {
    /// `namespace/name#rule`, for logs.
    pub label: Arc<str>,
    /// The rule's whole-request timeout, if any.
    pub timeout: Option<Duration>,
}

/// What to do with a request, and what logging needs to know about the decision.
#[derive(Debug)]
pub struct Decision {
    /// The route entry, once one matched.
    pub route: Option<MatchedRoute>,
    /// The backend kind, once one was drawn.
    pub backend: BackendKind,
    /// The inference request, once a pool's strategy was asked.
    pub inference: Option<InferenceInfo>,
    /// The next step.
    pub step: Step,
}

/// The next step for a request.
#[derive(Debug)]
pub enum Step {
    /// Answer the client with this error.
    Answer(ClientError),
    /// Let Pingora's phases proxy the request to this Service; the body streams through.
    Proxy(Arc<ServiceBackend>),
    /// Read the body, then decide again ([`super::route`] with the body, or [`super::pool::decide`]).
    ReadBody(BodyNeeded),
    /// Forward the body, already read, to these upstreams.
    Forward(Forward),
    /// Answer 200 with this JSON body (the gateway's own `/v1/models`).
    Respond(Bytes),
    /// Ask the pool's external endpoint picker where the request goes (then forward it, answer
    /// the picker's rejection, or apply the pool's failure mode).
    Pick(PickerCall),
    /// Wait in the pool's flow-control queue for room, then rank
    /// ([`super::pool::pick_admitted`]) or answer why not.
    Queue(Waiting),
    /// Have a pool server tokenize the prompt so it can be matched against the pool's KV
    /// events ([`crate::proxy::tokenize`]), then rank ([`super::pool::pick_tokenized`]).
    Tokenize(TokenizeCall),
}

/// A request to a pool whose KV events are watched, its model resolved, about to have its
/// prompt tokenized.
#[derive(Debug)]
pub struct TokenizeCall {
    /// The inference request.
    pub info: Box<InferenceInfo>,
    /// The body to send.
    pub body: Bytes,
    /// How its prompt becomes token ids.
    pub input: crate::kv_events::tokenize::PromptInput,
}

/// A request to a saturated pool, its body read and its model resolved, about to wait its turn.
#[derive(Debug)]
pub struct Waiting {
    /// The inference request (its pool is the one whose queue it waits in).
    pub info: InferenceInfo,
    /// The body to send.
    pub body: Bytes,
    /// Whether the pool had no endpoint at all when the request arrived (the longer
    /// `empty-pool-ttl-ms` applies).
    pub pool_empty: bool,
}

/// A request to a pool routed by an external endpoint picker, its body read.
#[derive(Debug)]
pub struct PickerCall {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Its picker.
    pub binding: Arc<PickerBinding>,
    /// The body as the client sent it.
    pub body: Bytes,
}

/// Why the body must be read before going on.
#[derive(Debug)]
pub enum BodyNeeded {
    /// The listener routes on the body's `model`: call [`super::route`] again with the body.
    Routing,
    /// The backend is this pool: call [`super::pool::decide`] with the body.
    Pool(Arc<Pool>),
}

/// A request whose body was read, ready for the forwarder.
#[derive(Debug)]
pub struct Forward {
    /// The body to send (with `model` rewritten for pools).
    pub body: Bytes,
    /// The value of the model-name header body-based routing matched on, to send upstream.
    pub model_header: Option<String>,
    /// Where to send it.
    pub upstreams: Upstreams,
}

/// The endpoints a forwarded request may go to.
#[derive(Debug)]
pub enum Upstreams {
    /// A Service's endpoints, round-robin.
    Service(Arc<ServiceBackend>),
    /// A pool's endpoints in the order its strategy ranked them.
    Pool(Dispatch),
    /// The endpoints an external picker chose, primary first.
    Picked(PickedUpstreams),
}

/// Where an external endpoint picker sent a request.
#[derive(Debug)]
pub struct PickedUpstreams {
    /// The pool.
    pub pool: Arc<Pool>,
    /// The picker's destination and fallback list, in order.
    pub destinations: Vec<SocketAddr>,
    /// The open exchange, to report the endpoint that served the request.
    pub served: Option<epp::ServedReport>,
    /// Estimated prompt tokens, counted in flight on the endpoint that takes the request.
    pub tokens: u64,
    /// Output tokens it may generate, counted in flight until they stream back.
    pub output_tokens: u64,
}

impl Decision {
    /// A decision with no route or inference request (yet).
    pub fn new(backend: BackendKind, step: Step) -> Self {
        Self {
            route: None,
            backend,
            inference: None,
            step,
        }
    }

    pub(super) fn answer(error: ClientError) -> Self {
        Self::new(BackendKind::None, Step::Answer(error))
    }
}

/// An inference request as the pool's strategy saw it, kept for metrics, logging and hooks.
#[derive(Debug)]
pub struct InferenceInfo {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Requested model.
    pub model: String,
    /// Model sent upstream.
    pub target_model: String,
    /// The request's priority ([`crate::snapshot::Pool::priority`]).
    pub priority: i32,
    /// The InferenceObjective the client named, when the pool has it.
    pub objective: Option<String>,
    /// The prompt as stable text, when the strategy reads it.
    pub prompt: Option<String>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether an InferenceModel or an exact InferenceModelRewrite match declares the requested
    /// model (its name is then a safe label).
    pub declared: bool,
    /// Whether the target model is one the configuration names (an InferenceModel's or a
    /// rewrite's target, or a declared model sent as requested), so a safe label; not when it
    /// came from the client's model-name-rewrite hint or is an undeclared name passed through.
    pub target_declared: bool,
    /// Whether the target model came from the client's model-name-rewrite hint.
    pub client_rewrite: bool,
    /// Size of the request body sent upstream.
    pub request_bytes: usize,
    /// Whether the request counts in `inference_model_running_requests` (released in logging).
    pub running: bool,
    /// How long the strategy's pick took.
    pub pick_duration: Duration,
    /// Candidates the strategy returned outside the pool (dropped; a strategy bug).
    pub invalid_candidates: usize,
    /// The prompt's block keys in the model server's tokens, when the pool's KV events are
    /// watched and the prompt was tokenized: matched against the events at each pick.
    pub prompt_cache: Option<crate::kv_events::PromptCache>,
}

impl InferenceInfo {
    /// The output tokens the request may generate: its `max_tokens`, else
    /// [`crate::proxy::queue::DEFAULT_OUTPUT_TOKENS`].
    pub fn output_budget(&self) -> u64 {
        self.max_tokens
            .map_or(crate::proxy::queue::DEFAULT_OUTPUT_TOKENS, u64::from)
    }

    /// The `(model_name, target_model_name)` metric labels. A name no InferenceModel declares
    /// becomes a label only once a model server answered it with success, so clients cannot mint
    /// series with made-up names.
    pub fn labels(&self, status: u16) -> (&str, &str) {
        let served = (200..300).contains(&status);
        let model = if (self.declared || served) && !self.model.is_empty() {
            self.model.as_str()
        } else {
            "unknown"
        };
        let target = if self.target_declared || served {
            self.target_model.as_str()
        } else {
            "unknown"
        };
        (model, target)
    }

    /// The name of the strategy that runs for the pool.
    pub fn strategy(&self) -> &str {
        &self.pool.resolution.implementation
    }

    /// The view a strategy sees of this request.
    pub fn view<'a>(&'a self, request_id: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            request_id,
            model: &self.model,
            target_model: &self.target_model,
            priority: self.priority,
            prompt: self.prompt.as_deref(),
            prompt_tokens: self.prompt_tokens,
            max_tokens: self.max_tokens,
            stream: self.stream,
            headers,
        }
    }
}

/// A pool's eligible endpoints in the order to try them.
#[derive(Debug)]
pub struct Dispatch {
    pub(super) pool: Arc<Pool>,
    pub(super) endpoints: Vec<Arc<Endpoint>>,
    /// What the strategy saw of each endpoint; empty when no strategy ranked them.
    pub(super) samples: Vec<EndpointSample>,
    pub(super) sampled_at: Instant,
    pub(super) order: std::vec::IntoIter<usize>,
    /// Estimated prompt tokens, counted in flight on the endpoint that takes the request.
    pub(super) tokens: u64,
    /// The strategy's estimate of the prompt tokens each endpoint would prefill, by index.
    pub(super) prefill_tokens: Option<Vec<u32>>,
    /// Output tokens the request may generate, counted in flight until they stream back.
    pub(super) output_tokens: u64,
    /// The queue's release of a request that waited its turn: the pool counts it as about to be
    /// dispatched until it is counted in flight on an endpoint ([`Dispatch::dispatched`]).
    pub(super) admit: Option<crate::flow::Admit>,
}

/// The next endpoint of a [`Dispatch`].
#[derive(Debug)]
pub struct Candidate<'a> {
    /// The pool.
    pub pool: &'a Pool,
    /// The endpoint.
    pub endpoint: &'a Arc<Endpoint>,
    /// What the strategy saw of it when it ranked the endpoints, if one did.
    pub view: Option<EndpointView<'a>>,
    /// Estimated prompt tokens of the request, to count in flight.
    pub tokens: u64,
    /// The prompt tokens this endpoint is expected to prefill (the strategy's estimate, else all
    /// of them), to count as prefill work until the first token.
    pub prefill_tokens: u32,
    /// Output tokens the request may generate.
    pub output_tokens: u64,
}

impl Dispatch {
    /// The request was counted in flight on an endpoint: its queue release is no longer needed
    /// to keep its place in the pool's load.
    pub fn dispatched(&mut self) {
        self.admit = None;
    }

    /// The next endpoint in order.
    pub fn next_candidate(&mut self) -> Option<Candidate<'_>> {
        let index = self.order.next()?;
        let endpoint = self.endpoints.get(index)?;
        Some(Candidate {
            pool: &self.pool,
            endpoint,
            view: self
                .samples
                .get(index)
                .map(|sample| sample.view(endpoint, self.sampled_at)),
            tokens: self.tokens,
            output_tokens: self.output_tokens,
            prefill_tokens: self
                .prefill_tokens
                .as_ref()
                .and_then(|estimates| estimates.get(index))
                .map_or(self.tokens, |&estimate| {
                    u64::from(estimate).min(self.tokens)
                })
                .try_into()
                .unwrap_or(u32::MAX),
        })
    }
}
