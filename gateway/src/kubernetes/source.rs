//! The kube source's process side: its own small tokio runtime, the initial sync, the rebuild
//! loop and the Pingora background service that stops it all.
//!
//! The source runs on a runtime of its own (one worker thread), started before Pingora: the first
//! snapshot decides which ports the proxy binds, so it must exist before the server starts. After
//! that the rebuild loop publishes into the same [`crate::state::GatewayState`] the proxy reads;
//! building happens on the source's thread, never on a proxy worker. The loop rebuilds when a
//! reflector reports a change that matters for routing, and when the status writer reports a plan
//! computed from an older version of an object than the store or the API server holds (see
//! [`super::writer`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::lease::Elector;
use super::reflect::{Changes, Stores};
use super::status::{StatusContext, StatusUpdate, compute};
use super::writer::StatusWriter;
use super::{KubeArgs, KubeError, client, identity};
use crate::config::{ConfigIssue, Kind, ObjectKey, Severity};
use crate::snapshot::{Snapshot, build};
use crate::source::{BuildSettings, Built, log_issues};
use crate::state::GatewayState;

/// How often the wait for a first Gateway logs that it is still waiting.
const WAITING_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The kube source: reflectors running, not yet serving.
pub struct KubeSource {
    runtime: Option<tokio::runtime::Runtime>,
    client: kube::Client,
    stores: Stores,
    changes: Arc<Changes>,
    tasks: Vec<JoinHandle<()>>,
    settings: BuildSettings,
    args: KubeArgs,
    identity: String,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("identity", &self.identity)
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            // Safe in any context, unlike dropping a runtime inside another one.
            runtime.shutdown_background();
        }
    }
}

impl KubeSource {
    /// Connect and start every reflector.
    pub fn start(args: &KubeArgs, settings: BuildSettings) -> Result<Self, KubeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube-source")
            .enable_all()
            .build()
            .map_err(KubeError::Runtime)?;
        let identity = identity(args);
        let changes = Arc::new(Changes::default());
        let (client, stores, tasks) = runtime.block_on(async {
            let client = client(args, &identity).await?;
            let (stores, tasks) = Stores::start(
                &client,
                args.kube_namespace.as_deref(),
                args.kube_watch_timeout,
                &changes,
            )
            .await;
            Ok::<_, KubeError>((client, stores, tasks))
        })?;
        Ok(Self {
            runtime: Some(runtime),
            client,
            stores,
            changes,
            tasks,
            settings,
            args: args.clone(),
            identity,
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the source")
    }

    /// One line describing the source.
    pub fn describe(&self) -> String {
        format!(
            "kubernetes: {} ({})",
            self.args.kube_namespace.as_deref().map_or_else(
                || "all namespaces".to_owned(),
                |ns| format!("namespace {ns}")
            ),
            self.identity
        )
    }

    /// Wait until every kind has been listed once, then build.
    pub fn synced_build(&self) -> Result<Built, KubeError> {
        let deadline = Instant::now() + self.args.kube_sync_timeout;
        self.runtime().block_on(async {
            loop {
                let missing = self.changes.unsynced(&self.stores.kinds);
                if missing.is_empty() {
                    break;
                }
                let wait = tokio::time::timeout_at(deadline.into(), self.changes.notify.notified());
                if wait.await.is_err() {
                    return Err(KubeError::SyncTimeout {
                        kinds: missing.join(", "),
                        timeout: self.args.kube_sync_timeout,
                    });
                }
            }
            Ok(())
        })?;
        Ok(self.build(None))
    }

    /// Wait for the first sync and for a Gateway of ours with an HTTP listener (listener ports
    /// are bound once, at start-up), then build the first snapshot.
    pub fn initial_build(&self) -> Result<Built, KubeError> {
        let mut built = self.synced_build()?;
        let mut logged: Option<Instant> = None;
        // An endpoint picker only (`--epp-pool`) needs no listener.
        while built.snapshot.ports.is_empty() && self.settings.listeners_required {
            if logged.is_none_or(|at| at.elapsed() >= WAITING_LOG_INTERVAL) {
                tracing::warn!(target: "kube", controller = %self.settings.controller_name, "waiting for a Gateway whose GatewayClass names this controller and has an HTTP listener");
                logged = Some(Instant::now());
            }
            self.runtime().block_on(async {
                let _ = tokio::time::timeout(WAITING_LOG_INTERVAL, self.changes.notify.notified())
                    .await;
                tokio::time::sleep(self.args.kube_debounce).await;
            });
            built = self.build(None);
        }
        Ok(built)
    }

    fn build(&self, previous: Option<&Snapshot>) -> Built {
        let objects = self.stores.object_set();
        let options = self.settings.options();
        let (snapshot, issues) = build(&objects, &options, previous);
        Built {
            snapshot,
            issues,
            ignored: Vec::new(),
            fingerprint: 0,
        }
    }

    /// Start the rebuild loop, the Lease and the status writer, publishing into `state`; the
    /// returned service stops them on shutdown.
    pub fn serve(self, state: Arc<GatewayState>, initial_issues: Vec<ConfigIssue>) -> KubeService {
        // Counted as work in progress until the Lease is released at shutdown, so the drain
        // monitor does not end the process first.
        let shutdown_work = state.active.start();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (plan_tx, plan_rx) = watch::channel(Arc::new(Vec::<StatusUpdate>::new()));
        let (leading_tx, leading_rx) = watch::channel(false);
        let recompute = Arc::new(Notify::new());
        let describe = self.describe();
        let mut tasks = Vec::new();
        let rebuild = Rebuild {
            stores: self.stores.clone(),
            changes: Arc::clone(&self.changes),
            settings: self.settings.clone(),
            state,
            describe,
            debounce: self.args.kube_debounce,
            plans: plan_tx,
            recompute: Arc::clone(&recompute),
            gateway_service: self.args.kube_gateway_service.as_deref().map(|s| {
                let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
                ObjectKey::new(Kind::Service, namespace, name)
            }),
            logged: Mutex::new(issue_set(&initial_issues)),
        };
        let handle = self.runtime().handle().clone();
        tasks.push(handle.spawn(rebuild.run()));
        let mut elector = None;
        if self.args.kube_write_status {
            let namespace = self
                .args
                .kube_lease_namespace
                .clone()
                .unwrap_or_else(|| self.client.default_namespace().to_owned());
            let lease = Elector::new(
                self.client.clone(),
                &namespace,
                &self.args.kube_lease_name,
                &self.identity,
                self.args.kube_lease_duration,
            );
            elector = Some(handle.spawn(lease.run(leading_tx, stop_rx)));
            let writer = StatusWriter::new(self.client.clone(), self.stores.clone(), recompute);
            tasks.push(handle.spawn(writer.run(plan_rx, leading_rx)));
        }
        KubeService {
            source: Mutex::new(Some(self)),
            tasks,
            elector: Mutex::new(elector),
            stop: stop_tx,
            shutdown_work: Mutex::new(Some(shutdown_work)),
        }
    }
}

fn issue_set(issues: &[ConfigIssue]) -> BTreeSet<String> {
    issues.iter().map(ToString::to_string).collect()
}

/// The rebuild loop's state.
struct Rebuild {
    stores: Stores,
    changes: Arc<Changes>,
    settings: BuildSettings,
    state: Arc<GatewayState>,
    describe: String,
    debounce: Duration,
    plans: watch::Sender<Arc<Vec<StatusUpdate>>>,
    /// Woken by the status writer when a plan was computed from an older version of an object
    /// than the store or the API server holds: status-only changes (another controller's entries)
    /// do not wake the loop through [`Changes`], so the writer asks for the recompute.
    recompute: Arc<Notify>,
    /// `--kube-gateway-service`.
    gateway_service: Option<ObjectKey>,
    /// Issues already logged, so a rebuild logs only what is new.
    logged: Mutex<BTreeSet<String>>,
}

impl Rebuild {
    async fn run(self) {
        // The first pass computes statuses for the snapshot being served.
        self.rebuild();
        loop {
            tokio::select! {
                () = self.changes.notify.notified() => {}
                () = self.recompute.notified() => {}
            }
            tokio::time::sleep(self.debounce).await;
            self.rebuild();
        }
    }

    /// Build from the stores and publish, whatever the issues: a bad object is left out of the
    /// snapshot and reported, and the rest keeps serving.
    fn rebuild(&self) {
        let previous = self.state.snapshots.load();
        let objects = self.stores.object_set();
        let (snapshot, issues) = build(&objects, &self.settings.options(), Some(&previous));
        let current = issue_set(&issues);
        {
            let mut logged = self.logged.lock();
            log_issues(issues.iter().filter(|i| !logged.contains(&i.to_string())));
            *logged = current;
        }
        let errors = issues
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .count();
        let result = if errors == 0 {
            "applied"
        } else {
            "applied-partially"
        };
        let context = StatusContext {
            controller_name: &self.settings.controller_name,
            bound_ports: &self.state.bound_ports,
            gateway_service: self.gateway_service.as_ref(),
            now: super::conditions::now(),
        };
        let plan = compute(&objects, &snapshot, &issues, &context);
        self.state
            .record_config(self.describe.clone(), result, issues);
        let generation = self.state.publish(snapshot);
        tracing::debug!(target: "config", generation, errors, "snapshot rebuilt from the Kubernetes API");
        self.plans.send_replace(Arc::new(plan));
    }
}

/// The Pingora background service of the kube source: it waits for shutdown, then releases the
/// Lease and stops the source's tasks.
pub struct KubeService {
    source: Mutex<Option<KubeSource>>,
    tasks: Vec<JoinHandle<()>>,
    elector: Mutex<Option<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    shutdown_work: Mutex<Option<crate::state::WorkGuard>>,
}

impl std::fmt::Debug for KubeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeService").finish_non_exhaustive()
    }
}

/// How long shutdown waits for the Lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait]
impl BackgroundService for KubeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        for task in &self.tasks {
            task.abort();
        }
        self.stop.send_replace(true);
        let elector = self.elector.lock().take();
        if let Some(elector) = elector {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, elector).await;
        }
        // Dropping the source aborts the reflectors and shuts its runtime down.
        let source = self.source.lock().take();
        drop(source);
        // Shutdown work done: the drain monitor may end the process.
        drop(self.shutdown_work.lock().take());
    }
}
