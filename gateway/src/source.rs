//! The file source: YAML files on disk, reloaded when they change.
//!
//! The watcher polls a fingerprint (a hash of names and contents) every interval rather than
//! relying on inotify: a mounted ConfigMap changes by swapping a symlink, editors replace files by
//! rename, and hashing a few kilobytes a second costs nothing. A change is loaded and built off the
//! request path; a configuration with errors is rejected and the previous snapshot keeps serving.
//! Requests in flight keep the snapshot they started with, so nothing is dropped by a reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use plugins::Registry;

use crate::config::issues::has_errors;
use crate::config::objects::ObjectSet;
use crate::config::{ConfigIssue, Severity, load};
use crate::snapshot::{BuildOptions, Snapshot, build};
use crate::state::GatewayState;

/// The configuration the gateway embeds, used when no `--config` is given: the local example
/// (the seed's objects plus five Pods on 127.0.0.2-6:8000).
pub const EMBEDDED_CONFIG: &[(&str, &str)] = &[
    (
        "vllm-service.yaml",
        include_str!("../../manifests/examples/local/vllm-service.yaml"),
    ),
    (
        "inference-pool.yaml",
        include_str!("../../manifests/examples/local/inference-pool.yaml"),
    ),
    (
        "inference-models.yaml",
        include_str!("../../manifests/examples/local/inference-models.yaml"),
    ),
    (
        "inference-gateway.yaml",
        include_str!("../../manifests/examples/local/inference-gateway.yaml"),
    ),
    (
        "pods.yaml",
        include_str!("../../manifests/examples/local/pods.yaml"),
    ),
];

/// Settings for building snapshots from any source.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Our controller name.
    pub controller_name: String,
    /// Default request timeout (`None`: no timeout).
    pub default_request_timeout: Option<Duration>,
    /// Strategy factories.
    pub registry: Arc<Registry>,
    /// How the gateway talks to external endpoint pickers.
    pub picker: epp::ClientSettings,
    /// Whether a configuration must give the proxy a listener (not with `--epp-pool`).
    pub listeners_required: bool,
}

impl BuildSettings {
    /// The options of a snapshot build.
    pub fn options(&self) -> BuildOptions<'_> {
        BuildOptions {
            controller_name: &self.controller_name,
            registry: &self.registry,
            default_request_timeout: self.default_request_timeout,
            picker: &self.picker,
            listeners_required: self.listeners_required,
        }
    }
}

/// Where the objects come from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// `--config` files or directories.
    Files(Vec<PathBuf>),
    /// The embedded local example.
    Embedded,
}

impl ConfigSource {
    /// Human-readable description.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::Files(paths) => {
                let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                format!("files: {}", paths.join(", "))
            }
            ConfigSource::Embedded => "embedded local example (manifests/examples/local)".into(),
        }
    }

    /// Read every object, with parse problems and a fingerprint.
    pub fn load(&self) -> load::Loaded {
        match self {
            ConfigSource::Files(paths) => load::load(paths),
            ConfigSource::Embedded => {
                let mut objects = ObjectSet::default();
                let mut issues = Vec::new();
                for (name, text) in EMBEDDED_CONFIG {
                    issues.extend(objects.add_yaml(text, std::path::Path::new(name)));
                }
                load::Loaded {
                    objects,
                    issues,
                    fingerprint: 0,
                }
            }
        }
    }

    fn fingerprint(&self) -> Option<u64> {
        match self {
            ConfigSource::Files(paths) => load::fingerprint(paths),
            ConfigSource::Embedded => Some(0),
        }
    }
}

/// The result of loading and building once.
#[derive(Debug)]
pub struct Built {
    /// The snapshot (usable only without errors).
    pub snapshot: Snapshot,
    /// Every problem, parse and build.
    pub issues: Vec<ConfigIssue>,
    /// Documents of kinds the gateway ignores.
    pub ignored: Vec<crate::config::objects::IgnoredDocument>,
    /// Fingerprint of the files read.
    pub fingerprint: u64,
}

impl Built {
    /// Whether the snapshot may be served.
    pub fn is_usable(&self) -> bool {
        !has_errors(&self.issues)
    }
}

/// Load `source` and build a snapshot, reusing runtime state from `previous`.
pub fn load_and_build(
    source: &ConfigSource,
    settings: &BuildSettings,
    previous: Option<&Snapshot>,
) -> Built {
    let loaded = source.load();
    let (snapshot, build_issues) = build(&loaded.objects, &settings.options(), previous);
    let mut issues = loaded.issues;
    issues.extend(build_issues);
    Built {
        snapshot,
        issues,
        ignored: loaded.objects.ignored,
        fingerprint: loaded.fingerprint,
    }
}

/// Log every issue at its severity's level.
pub fn log_issues<'a>(issues: impl IntoIterator<Item = &'a ConfigIssue>) {
    for issue in issues {
        match issue.severity {
            Severity::Error => tracing::error!(target: "config", "{issue}"),
            Severity::Warning => tracing::warn!(target: "config", "{issue}"),
        }
    }
}

/// Background task that reloads the file source when it changes.
#[derive(Debug)]
pub struct ConfigWatcher {
    source: ConfigSource,
    settings: BuildSettings,
    state: Arc<GatewayState>,
    interval: Duration,
    fingerprint: Mutex<u64>,
}

impl ConfigWatcher {
    /// A watcher that starts from the already-applied `fingerprint`.
    pub fn new(
        source: ConfigSource,
        settings: BuildSettings,
        state: Arc<GatewayState>,
        interval: Duration,
        fingerprint: u64,
    ) -> Self {
        Self {
            source,
            settings,
            state,
            interval,
            fingerprint: Mutex::new(fingerprint),
        }
    }

    /// Reload if the files changed. Returns whether a new snapshot was published.
    pub fn check(&self) -> bool {
        let Some(current) = self.source.fingerprint() else {
            // A file is missing or unreadable right now (mid-rename); try again next tick.
            return false;
        };
        if current == *self.fingerprint.lock() {
            return false;
        }
        let previous = self.state.snapshots.load();
        let built = load_and_build(&self.source, &self.settings, Some(&previous));
        *self.fingerprint.lock() = built.fingerprint;
        log_issues(&built.issues);
        let usable = built.is_usable();
        let result = if usable { "applied" } else { "rejected" };
        self.state
            .record_config(self.source.describe(), result, built.issues);
        if !usable {
            tracing::error!(target: "config", "configuration rejected; still serving generation {}", previous.generation);
            return false;
        }
        let generation = self.state.publish(built.snapshot);
        tracing::info!(target: "config", generation, "configuration applied");
        true
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if matches!(self.source, ConfigSource::Embedded) {
            return;
        }
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Reading a few kilobytes of YAML runs on the watcher's own runtime, never on a
                // proxy worker.
                _ = ticker.tick() => {
                    self.check();
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
