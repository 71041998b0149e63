//! The kube source: the gateway's objects read from the Kubernetes API instead of files, and the
//! status conditions written back.
//!
//! One kube-runtime reflector per kind (GatewayClass, Gateway, HTTPRoute, Service, Pod, Namespace,
//! InferencePool v1alpha2 and v1, InferenceModel, and Envoy's BackendTrafficPolicy when its CRD is
//! installed) keeps a store that swaps in a complete view after every relist. A change that matters
//! for routing wakes the rebuild loop, which waits a short debounce, turns the stores into the same
//! [`crate::config::ObjectSet`] the file source produces, runs the same
//! [`crate::snapshot::build()`], and publishes the result. Unlike the file source it publishes a
//! snapshot with errors: a bad object is left out (and reported in its status and the logs) while
//! the rest keeps serving. When the API server is gone the stores keep their last view, so routing
//! continues on the last snapshot, and the watchers relist when it returns.
//!
//! Status is derived from the build's [`crate::config::ConfigIssue`]s and the snapshot
//! ([`status`]) and written only by the replica holding a coordination Lease ([`lease`],
//! [`writer`]), each write conditional on the object's resourceVersion being the one the status
//! was computed from. This module never touches the request path: it only publishes snapshots.

pub mod conditions;
pub mod crds;
pub mod lease;
pub mod reflect;
pub mod source;
pub mod status;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use source::KubeSource;

/// Flags of the kube source (`--source kube`).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file. Without it the standard lookup applies: `$KUBECONFIG`, `~/.kube/config`,
    /// then the in-cluster service account.
    #[arg(long, value_name = "PATH", env = "GATEWAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Watch only this namespace (GatewayClasses and Namespaces are cluster-scoped and always
    /// watched). Default: every namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub kube_namespace: Option<String>,

    /// How long the rebuild waits after a change so a burst of events makes one snapshot.
    #[arg(long, default_value = "100ms", value_parser = positive_duration)]
    pub kube_debounce: Duration,

    /// How long the API server keeps one watch open (its `timeoutSeconds`) before the gateway
    /// watches again from the last resourceVersion it saw. kube-runtime's default; shorter means
    /// more watch requests, longer means a resumed watch is further behind.
    #[arg(long, default_value = "290s", value_parser = positive_duration)]
    pub kube_watch_timeout: Duration,

    /// How long to wait at start-up for the first complete list of every kind.
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    pub kube_sync_timeout: Duration,

    /// The Service in front of the gateway's replicas (`namespace/name`); Gateways report its
    /// load-balancer address (or cluster IP) in `status.addresses`.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "GATEWAY_SERVICE")]
    pub kube_gateway_service: Option<String>,

    /// Whether this process writes status (only while it holds the Lease).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub kube_write_status: bool,

    /// This replica's identity in the Lease (the pod name in a Deployment).
    #[arg(long, env = "POD_NAME")]
    pub kube_identity: Option<String>,

    /// Name of the Lease that elects the replica writing status.
    #[arg(long, default_value = "inference-gateway-status")]
    pub kube_lease_name: String,

    /// Namespace of the Lease (default: the service account's or the kubeconfig's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub kube_lease_namespace: Option<String>,

    /// How long a Lease holder that stopped renewing keeps it before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = positive_duration)]
    pub kube_lease_duration: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse_duration(text)?
        .ok_or_else(|| "must be greater than zero".to_owned())
}

/// What can go wrong in the kube source.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The Kubernetes client could not be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    /// The tokio runtime of the source could not start.
    #[error("cannot start the kube source's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Some kinds were not listed before the deadline.
    #[error(
        "the first list of {kinds} did not complete within {timeout:?} (is the API server reachable, are the CRDs installed and is the RBAC applied?)"
    )]
    SyncTimeout {
        /// The kinds still missing.
        kinds: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A status write failed.
    #[error("writing the status of {object}: {source}")]
    StatusWrite {
        /// The object.
        object: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A status write was refused because the object changed since the version the status was
    /// computed from (`409 Conflict` on the resourceVersion precondition); the status is
    /// recomputed from the newer version and written again.
    #[error(
        "the status of {object} was computed from resourceVersion {resource_version}, which is no longer current"
    )]
    StatusConflict {
        /// The object.
        object: String,
        /// The resourceVersion the refused patch carried.
        resource_version: String,
    },
    /// A Lease operation failed.
    #[error("Lease {lease}: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

impl KubeError {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            KubeError::Config(_) => "config",
            KubeError::Client(_) => "client",
            KubeError::Runtime(_) => "runtime",
            KubeError::SyncTimeout { .. } => "sync_timeout",
            KubeError::StatusWrite { .. } => "status_write",
            KubeError::StatusConflict { .. } => "status_conflict",
            KubeError::Lease { .. } => "lease",
        }
    }
}

/// The User-Agent of this replica's API requests: the audit log shows which replica wrote what.
pub fn user_agent(identity: &str) -> String {
    format!(
        "inference-gateway/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )
}

/// This replica's identity: `--kube-identity` (`$POD_NAME`), else the host name, else the pid.
pub fn identity(args: &KubeArgs) -> String {
    args.kube_identity
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| format!("inference-gateway-{}", std::process::id()))
}

/// Build a client from `--kubeconfig` or the standard lookup, identifying this replica.
pub async fn client(args: &KubeArgs, identity: &str) -> Result<kube::Client, KubeError> {
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    if let Ok(value) = http::HeaderValue::from_str(&user_agent(identity)) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    kube::Client::try_from(config).map_err(|e| KubeError::Client(Box::new(e)))
}
