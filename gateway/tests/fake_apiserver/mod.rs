//! A fake Kubernetes API server: real HTTP, so the gateway's kube client, watchers and reflectors
//! run unchanged against it.
//!
//! It keeps objects as JSON in memory under one global resourceVersion counter and an event
//! history, and serves what client-go and kube-rs use:
//! - list (`GET .../pods`), paginated with `limit` and `continue`, carrying the list's
//!   resourceVersion; items of built-in kinds without `apiVersion`/`kind`, as the real server does;
//! - watch (`?watch=true&resourceVersion=N`): history after N, then live events, as one JSON event
//!   per line; `BOOKMARK` events every 200 ms when `allowWatchBookmarks` is set;
//! - get, create (`409 AlreadyExists`), replace and merge patch with optimistic concurrency (a
//!   `metadata.resourceVersion` in the body is a precondition: when it is not the stored one the
//!   answer is a `Status` with `409 Conflict` and nothing changes; without one the write applies
//!   unconditionally), and delete; the `status` subresource (`PATCH`/`PUT .../name/status`)
//!   changes only `.status`, and the main resource never changes `.status`;
//! - Envoy's BackendTrafficPolicy is "not installed" (`404`), like a cluster without its CRD.
//!
//! Everything else is tested against a real kube-apiserver (`kube_cluster*.rs`); this server
//! exists for what that one cannot do on cue. Tests drive it directly:
//! [`FakeApiServer::apply`] changes objects (and emits events),
//! [`FakeApiServer::race_next_status_patch`] makes another writer change an object just before the
//! next status patch of it arrives, [`FakeApiServer::status_writes`] lists the status writes and
//! [`FakeApiServer::conflicts`] the `409 Conflict`s.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

type Body = BoxBody<Bytes, Infallible>;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(200);

/// A kind the fake server knows.
#[derive(Debug)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Built-in kinds are listed without apiVersion/kind on their items.
    pub builtin: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

macro_rules! resource {
    ($group:expr, $version:expr, $plural:expr, $kind:expr, $namespaced:expr, $builtin:expr) => {
        Resource {
            group: $group,
            version: $version,
            plural: $plural,
            kind: $kind,
            namespaced: $namespaced,
            builtin: $builtin,
        }
    };
}

/// Every kind the fake server serves.
pub static RESOURCES: &[Resource] = &[
    resource!("", "v1", "pods", "Pod", true, true),
    resource!("", "v1", "services", "Service", true, true),
    resource!("", "v1", "namespaces", "Namespace", false, true),
    resource!("coordination.k8s.io", "v1", "leases", "Lease", true, true),
    resource!(
        "gateway.networking.k8s.io",
        "v1",
        "gatewayclasses",
        "GatewayClass",
        false,
        false
    ),
    resource!(
        "gateway.networking.k8s.io",
        "v1",
        "gateways",
        "Gateway",
        true,
        false
    ),
    resource!(
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
        "HTTPRoute",
        true,
        false
    ),
    resource!(
        "inference.networking.x-k8s.io",
        "v1alpha2",
        "inferencepools",
        "InferencePool",
        true,
        false
    ),
    resource!(
        "inference.networking.x-k8s.io",
        "v1alpha2",
        "inferencemodels",
        "InferenceModel",
        true,
        false
    ),
    resource!(
        "inference.networking.k8s.io",
        "v1",
        "inferencepools",
        "InferencePool",
        true,
        false
    ),
    resource!(
        "gateway.envoyproxy.io",
        "v1alpha1",
        "backendtrafficpolicies",
        "BackendTrafficPolicy",
        true,
        false
    ),
];

fn resource_by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: &'static Resource,
    namespace: String,
    kind: &'static str,
    object: Value,
}

type Key = (&'static str, &'static str, String, String); // (apiVersion group, plural, ns, name)

fn key(r: &'static Resource, namespace: &str, name: &str) -> Key {
    (r.group, r.plural, namespace.to_owned(), name.to_owned())
}

/// Another writer's change, made just before the next status patch of one object.
struct Race {
    resource: &'static Resource,
    namespace: String,
    name: String,
    change: Box<dyn FnOnce(&mut Value) + Send>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    uids: u64,
    races: Vec<Race>,
}

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    requests: Mutex<Vec<Recorded>>,
    /// Paths of the writes answered with 409 Conflict (a stale resourceVersion precondition).
    conflicts: Mutex<Vec<String>>,
    /// Accept loop, connections and watch streams: aborted together on drop.
    tasks: Mutex<JoinSet<()>>,
}

/// The fake API server.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.inner.tasks.lock().abort_all();
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn status(code: u16, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.into(), "reason": reason, "code": code,
    })
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn error(code: u16, reason: &str, message: impl Into<String>) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &status(code, reason, message),
    )
}

impl FakeApiServer {
    /// Start on a free port.
    pub async fn start_new() -> FakeApiServer {
        let (events, _) = broadcast::channel(16 * 1024);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            events,
            requests: Mutex::new(Vec::new()),
            conflicts: Mutex::new(Vec::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = Arc::clone(&inner);
        inner.tasks.lock().spawn(async move {
            let inner = accept;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn_inner = Arc::clone(&inner);
                let mut tasks = inner.tasks.lock();
                while tasks.try_join_next().is_some() {}
                tasks.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let inner = Arc::clone(&conn_inner);
                        async move { Ok::<_, Infallible>(handle(inner, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer { inner, addr }
    }

    /// Write a kubeconfig pointing at this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]
users: [{{name: fake, user: {{}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]
current-context: fake
",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Create or update every object of a multi-document YAML text (status included), emitting
    /// ADDED or MODIFIED events.
    pub fn apply(&self, yaml: &str) {
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            if value.is_null() {
                continue;
            }
            let api_version = value["apiVersion"].as_str().unwrap().to_owned();
            let kind = value["kind"].as_str().unwrap().to_owned();
            let resource = resource_by_kind(&api_version, &kind).unwrap_or_else(|| {
                panic!("the fake API server does not serve {api_version} {kind}")
            });
            let namespace = if resource.namespaced {
                value["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned()
            } else {
                String::new()
            };
            let name = value["metadata"]["name"].as_str().unwrap().to_owned();
            let mut state = self.inner.state.lock();
            let existing = state
                .objects
                .get(&key(resource, &namespace, &name))
                .cloned();
            self.inner.store(
                &mut state,
                resource,
                &namespace,
                value,
                existing.as_ref(),
                true,
            );
        }
    }

    /// An object as stored.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_by_kind(api_version, kind).unwrap();
        let namespace = if resource.namespaced { namespace } else { "" };
        self.inner
            .state
            .lock()
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
    }

    /// Writes to status subresources so far.
    pub fn status_writes(&self) -> Vec<Recorded> {
        self.inner
            .requests
            .lock()
            .clone()
            .into_iter()
            .filter(|r| (r.method == "PATCH" || r.method == "PUT") && r.path.ends_with("/status"))
            .collect()
    }

    /// The paths of the writes refused so far with 409 Conflict because their resourceVersion
    /// was stale.
    pub fn conflicts(&self) -> Vec<String> {
        self.inner.conflicts.lock().clone()
    }

    /// Race the next status patch (`PATCH .../name/status`) of an object with another writer:
    /// when that request arrives, and before it is checked or applied, `change` edits the stored
    /// object (its status, as another controller would) and the result is stored under a new
    /// resourceVersion with a MODIFIED event. A patch carrying the previous resourceVersion is then
    /// refused with 409 Conflict; one without a precondition is applied over the change.
    pub fn race_next_status_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) + Send + 'static,
    ) {
        let resource = resource_by_kind(api_version, kind).unwrap();
        let namespace = if resource.namespaced { namespace } else { "" };
        self.inner.state.lock().races.push(Race {
            resource,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            change: Box::new(change),
        });
    }

    /// Whether a race set up with [`Self::race_next_status_patch`] has not happened yet.
    pub fn race_pending(&self) -> bool {
        !self.inner.state.lock().races.is_empty()
    }
}

impl Inner {
    /// The `409 Conflict` answer when `body` carries a `metadata.resourceVersion` other than
    /// `existing`'s, as the API server checks the precondition of a replace or a patch.
    fn precondition_failed(
        &self,
        path: &str,
        resource: &Resource,
        body: &Value,
        existing: &Value,
    ) -> Option<Response<Body>> {
        // Without a resourceVersion the write is unconditional.
        let sent = body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())?;
        if Some(sent) == existing["metadata"]["resourceVersion"].as_str() {
            return None;
        }
        self.conflicts.lock().push(path.to_owned());
        let name = existing["metadata"]["name"].as_str().unwrap_or_default();
        let qualified = if resource.group.is_empty() {
            resource.plural.to_owned()
        } else {
            format!("{}.{}", resource.plural, resource.group)
        };
        Some(json_response(
            StatusCode::CONFLICT,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": format!("Operation cannot be fulfilled on {qualified} {name:?}: the object has been modified; please apply your changes to the latest version and try again"),
                "reason": "Conflict",
                "details": {"name": name, "group": resource.group, "kind": resource.plural},
                "code": 409,
            }),
        ))
    }

    /// Run the race set up for the next status patch of this object, if any: another writer's
    /// change, stored (and announced) before the patch is looked at. Returns the stored object.
    fn race(
        &self,
        state: &mut State,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
        existing: Value,
    ) -> Value {
        let Some(at) = state.races.iter().position(|r| {
            std::ptr::eq(r.resource, resource) && r.namespace == namespace && r.name == name
        }) else {
            return existing;
        };
        let race = state.races.remove(at);
        let mut changed = existing.clone();
        (race.change)(&mut changed);
        self.store(state, resource, namespace, changed, Some(&existing), true)
    }

    /// Store `object` (a create when `existing` is None), stamping metadata and emitting the event.
    fn store(
        &self,
        state: &mut State,
        resource: &'static Resource,
        namespace: &str,
        mut object: Value,
        existing: Option<&Value>,
        keep_status: bool,
    ) -> Value {
        state.rv += 1;
        let rv = state.rv;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let spec_changed = existing.is_some_and(|old| old.get("spec") != object.get("spec"));
        let meta = object["metadata"].as_object_mut().expect("metadata");
        if resource.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        match existing {
            None => {
                state.uids += 1;
                meta.insert("uid".into(), json!(format!("uid-{}", state.uids)));
                meta.entry("creationTimestamp").or_insert(json!(now()));
                meta.insert("generation".into(), json!(1));
            }
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    if let Some(v) = old["metadata"].get(field) {
                        meta.insert(field.into(), v.clone());
                    }
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                meta.insert(
                    "generation".into(),
                    json!(if spec_changed {
                        generation + 1
                    } else {
                        generation
                    }),
                );
                if !keep_status {
                    match old.get("status") {
                        Some(s) => object["status"] = s.clone(),
                        None => {
                            object.as_object_mut().unwrap().remove("status");
                        }
                    }
                }
            }
        }
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        state
            .objects
            .insert(key(resource, namespace, &name), object.clone());
        let event = Event {
            rv,
            resource,
            namespace: namespace.to_owned(),
            kind: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        };
        state.history.push(event.clone());
        let _ = self.events.send(event);
        object
    }

    fn remove(
        &self,
        state: &mut State,
        resource: &'static Resource,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let mut object = state.objects.remove(&key(resource, namespace, name))?;
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let event = Event {
            rv: state.rv,
            resource,
            namespace: namespace.to_owned(),
            kind: "DELETED",
            object: object.clone(),
        };
        state.history.push(event.clone());
        let _ = self.events.send(event);
        Some(object)
    }
}

/// A parsed request path.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            (Some((*ns).to_owned()), {
                let mut v = vec![*plural];
                v.extend_from_slice(rest);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let resource = find(rest.first()?)?;
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.replace("%3D", "=").replace("%2C", ","))
        })
        .collect()
}

async fn handle(inner: Arc<Inner>, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    inner.requests.lock().push(Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        body: body.clone(),
    });
    let Some(target) = parse_path(&path) else {
        return error(404, "NotFound", format!("the server could not find {path}"));
    };
    if target.resource.plural == "backendtrafficpolicies" {
        return error(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    let params = query_params(&query);
    let namespace = target.namespace.clone().unwrap_or_default();
    let method = parts.method.as_str();
    match (
        method,
        target.name.as_deref(),
        target.subresource.as_deref(),
    ) {
        ("GET", None, None)
            if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(inner, target, &params)
        }
        ("GET", None, None) => list(&inner, &target, &params),
        ("GET", Some(name), None) => {
            let state = inner.state.lock();
            match state.objects.get(&key(target.resource, &namespace, name)) {
                Some(object) => json_response(StatusCode::OK, object),
                None => error(
                    404,
                    "NotFound",
                    format!("{} {name:?} not found", target.resource.plural),
                ),
            }
        }
        ("POST", None, None) => {
            let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                return error(422, "Invalid", "metadata.name is required");
            };
            let mut state = inner.state.lock();
            if state
                .objects
                .contains_key(&key(target.resource, &namespace, &name))
            {
                return error(409, "AlreadyExists", format!("{name:?} already exists"));
            }
            let object = inner.store(&mut state, target.resource, &namespace, body, None, true);
            json_response(StatusCode::CREATED, &object)
        }
        ("PUT", Some(name), subresource) => {
            let mut state = inner.state.lock();
            let Some(existing) = state
                .objects
                .get(&key(target.resource, &namespace, name))
                .cloned()
            else {
                return error(404, "NotFound", format!("{name:?} not found"));
            };
            if let Some(conflict) =
                inner.precondition_failed(&path, target.resource, &body, &existing)
            {
                return conflict;
            }
            let object = if subresource == Some("status") {
                let mut object = existing.clone();
                object["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                inner.store(
                    &mut state,
                    target.resource,
                    &namespace,
                    object,
                    Some(&existing),
                    true,
                )
            } else {
                inner.store(
                    &mut state,
                    target.resource,
                    &namespace,
                    body,
                    Some(&existing),
                    false,
                )
            };
            json_response(StatusCode::OK, &object)
        }
        ("PATCH", Some(name), subresource) => {
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.starts_with("application/merge-patch+json")
                && !content_type.starts_with("application/strategic-merge-patch+json")
            {
                return error(
                    415,
                    "UnsupportedMediaType",
                    format!("patch type {content_type} is not supported by the fake"),
                );
            }
            let mut state = inner.state.lock();
            let Some(existing) = state
                .objects
                .get(&key(target.resource, &namespace, name))
                .cloned()
            else {
                return error(404, "NotFound", format!("{name:?} not found"));
            };
            let existing = if subresource == Some("status") {
                inner.race(&mut state, target.resource, &namespace, name, existing)
            } else {
                existing
            };
            if let Some(conflict) =
                inner.precondition_failed(&path, target.resource, &body, &existing)
            {
                return conflict;
            }
            let mut object = existing.clone();
            let object = if subresource == Some("status") {
                let patch = json!({"status": body.get("status").cloned().unwrap_or(Value::Null)});
                gateway::kubernetes::conditions::merge_patch(&mut object, &patch);
                inner.store(
                    &mut state,
                    target.resource,
                    &namespace,
                    object,
                    Some(&existing),
                    true,
                )
            } else {
                gateway::kubernetes::conditions::merge_patch(&mut object, &body);
                inner.store(
                    &mut state,
                    target.resource,
                    &namespace,
                    object,
                    Some(&existing),
                    false,
                )
            };
            json_response(StatusCode::OK, &object)
        }
        ("DELETE", Some(name), None) => {
            let mut state = inner.state.lock();
            match inner.remove(&mut state, target.resource, &namespace, name) {
                Some(object) => json_response(StatusCode::OK, &object),
                None => error(404, "NotFound", format!("{name:?} not found")),
            }
        }
        _ => error(405, "MethodNotAllowed", format!("{method} {path}")),
    }
}

fn presented(resource: &Resource, object: &Value) -> Value {
    let mut object = object.clone();
    if resource.builtin
        && let Some(map) = object.as_object_mut()
    {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn list(inner: &Inner, target: &Target, params: &BTreeMap<String, String>) -> Response<Body> {
    let state = inner.state.lock();
    let items: Vec<&Value> = state
        .objects
        .iter()
        .filter(|((group, plural, ns, _), _)| {
            *group == target.resource.group
                && *plural == target.resource.plural
                && target.namespace.as_ref().is_none_or(|n| n == ns)
        })
        .map(|(_, v)| v)
        .collect();
    let offset: usize = params
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<Value> = items
        .iter()
        .skip(offset)
        .take(limit)
        .map(|o| presented(target.resource, o))
        .collect();
    let next = offset.saturating_add(limit);
    let mut metadata = json!({"resourceVersion": state.rv.to_string()});
    if next < items.len() {
        metadata["continue"] = json!(next.to_string());
    }
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": target.resource.api_version(),
            "kind": format!("{}List", target.resource.kind),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn watch(inner: Arc<Inner>, target: Target, params: &BTreeMap<String, String>) -> Response<Body> {
    let from: Option<u64> = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .filter(|rv| *rv > 0);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let resource = target.resource;
    let namespace = target.namespace.clone();
    let matches = move |e: &Event| {
        std::ptr::eq(e.resource, resource) && namespace.as_ref().is_none_or(|n| *n == e.namespace)
    };
    let (mut sender, channel) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
    // Subscribe and read the backlog under one lock, so no event falls between them.
    let (mut live, backlog, mut last_rv) = {
        let state = inner.state.lock();
        let live = inner.events.subscribe();
        match from {
            Some(rv) => {
                let backlog: Vec<Bytes> = state
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && matches(e))
                    .map(|e| event_line(e.kind, &e.object))
                    .collect();
                (live, backlog, state.rv)
            }
            None => {
                let backlog: Vec<Bytes> = state
                    .objects
                    .iter()
                    .filter(|((group, plural, ns, _), _)| {
                        *group == resource.group
                            && *plural == resource.plural
                            && target.namespace.as_ref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, o)| event_line("ADDED", o))
                    .collect();
                (live, backlog, state.rv)
            }
        }
    };
    inner.tasks.lock().spawn(async move {
        for line in backlog {
            if sender.send_data(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) => {
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if matches(&event) && sender.send_data(event_line(event.kind, &event.object)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return, // lagged or closed: the client re-watches
                },
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({
                        "apiVersion": resource.api_version(), "kind": resource.kind,
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    });
                    if sender.send_data(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(channel.boxed())
        .unwrap()
}
