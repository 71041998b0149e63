//! What the real-API-server tests (`kube_cluster.rs`, `kube_cluster_status.rs`) share: a
//! [`TestCluster`] with the gateway's namespace and RBAC applied and a token for its
//! ServiceAccount, the gateway process reading it, and readers of the API server's audit log.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::cluster::TestCluster;
use testkit::k8s::{Manifest, Object, Pod};
use testkit::*;

/// The tests take turns: each runs a control plane of its own.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The gateway's ServiceAccount, as `manifests/deploy/10-rbac.yaml` names it.
pub const NAMESPACE: &str = "inference-gateway";
pub const SERVICE_ACCOUNT: &str = "inference-gateway";
pub const USER: &str = "system:serviceaccount:inference-gateway:inference-gateway";

pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The shipped RBAC manifest's documents.
pub fn rbac_documents() -> Vec<Value> {
    let text = std::fs::read_to_string(repository().join("manifests/deploy/10-rbac.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::from_value(serde::Deserialize::deserialize(d).unwrap()).unwrap())
        .collect()
}

pub fn yaml(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A cluster with the gateway's namespace and RBAC applied, and a token for its ServiceAccount.
pub async fn cluster() -> (TestCluster, String) {
    cluster_with(&[]).await
}

/// [`cluster`] with extra kube-apiserver flags.
pub async fn cluster_with(apiserver_flags: &[&str]) -> (TestCluster, String) {
    let cluster = TestCluster::start_with(apiserver_flags).await;
    let namespace =
        std::fs::read_to_string(repository().join("manifests/deploy/00-namespace.yaml"));
    cluster.apply(&namespace.unwrap()).await;
    cluster.apply(&yaml(&rbac_documents())).await;
    let token = cluster.token(NAMESPACE, SERVICE_ACCOUNT).await;
    (cluster, token)
}

/// [`cluster`] serving the seed's shape with one Ready pod, on a backend at 127.0.0.`ip`.
pub async fn one_pod(ip: u8) -> (TestCluster, String, Backend) {
    let (cluster, token) = cluster().await;
    let (port, mut backends) = start_backends(ip, 1).await;
    cluster
        .apply(&objects(free_port(), free_port(), port))
        .await;
    let backend = backends.remove(0);
    cluster.apply(&pod("qwen-0", backend.addr.ip(), true)).await;
    (cluster, token, backend)
}

/// A gateway process with `--source kube`, authenticated as its ServiceAccount.
pub struct KubeGateway {
    pub child: tokio::process::Child,
    pub admin: SocketAddr,
    dir: PathBuf,
}

impl Drop for KubeGateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl KubeGateway {
    /// Start the gateway as replica `identity`; `ready` says whether to wait for `/readyz`.
    pub async fn start(
        cluster: &TestCluster,
        token: &str,
        identity: &str,
        ready: bool,
    ) -> KubeGateway {
        Self::start_with(cluster, token, identity, ready, &[]).await
    }

    /// [`KubeGateway::start`] with extra flags.
    pub async fn start_with(
        cluster: &TestCluster,
        token: &str,
        identity: &str,
        ready: bool,
        extra: &[&str],
    ) -> KubeGateway {
        let dir = Self::scratch();
        let kubeconfig = cluster.token_kubeconfig(&dir, token, NAMESPACE);
        Self::launch(&kubeconfig, dir, identity, ready, extra).await
    }

    /// A fresh directory for a gateway's kubeconfig and log (removed with the gateway).
    pub fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("igw-kube-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Start the gateway on `kubeconfig` as replica `identity`, logging into `dir` (which it
    /// owns from now on); `ready` says whether to wait for `/readyz`.
    pub async fn launch(
        kubeconfig: &Path,
        dir: PathBuf,
        identity: &str,
        ready: bool,
        extra: &[&str],
    ) -> KubeGateway {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
            .args(["--source", "kube", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--admin-addr",
                &admin.to_string(),
                "--listen-host",
                "127.0.0.1",
            ])
            .args([
                "--threads",
                "1",
                "--grace-period",
                "1s",
                "--drain-delay",
                "0s",
            ])
            .args(["--kube-identity", identity, "--kube-debounce", "50ms"])
            .args(["--kube-lease-duration", "2s", "--kube-sync-timeout", "10s"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("IGW_TEST_LOG").unwrap_or_else(|_| "info,access=warn".into()),
            )
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let gateway = KubeGateway { child, admin, dir };
        if ready {
            let client = client();
            wait_until("the gateway is ready", DEADLINE, || async {
                let uri = format!("http://{admin}/readyz");
                matches!(client.get(uri.parse().unwrap()).await, Ok(r) if r.status() == 200)
            })
            .await;
        }
        gateway
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    pub async fn snapshot(&self) -> Value {
        snapshot_at(self.admin).await
    }

    /// Wait until `condition` holds on `/debug/snapshot`, at most `deadline`.
    pub async fn wait_snapshot(
        &self,
        what: &str,
        deadline: Duration,
        condition: impl Fn(&Value) -> bool,
    ) {
        wait_for_snapshot_at(self.admin, what, deadline, condition, || self.log()).await;
    }
}

/// A model-server pod labelled `app: qwen`, as YAML.
pub fn pod(name: &str, ip: impl Into<IpAddr>, ready: bool) -> String {
    Pod::qwen(name, ip.into(), ready).to_yaml()
}

/// The seed's shape: see [`Manifest::qwen_pool`].
pub fn objects(http_port: u16, llm_port: u16, port: u16) -> String {
    Manifest::qwen_pool(http_port, llm_port, port).render()
}

/// Audit events of the gateway's ServiceAccount.
pub fn gateway_requests(cluster: &TestCluster) -> Vec<Value> {
    cluster
        .audit()
        .into_iter()
        .filter(|e| e["user"]["username"] == USER)
        .collect()
}

/// The gateway's requests that RBAC refused, as `verb group/resource[/subresource]` lines.
pub fn refusals(cluster: &TestCluster) -> Vec<String> {
    gateway_requests(cluster)
        .into_iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| {
            let object = &e["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or("").to_owned();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let group = object["apiGroup"].as_str().unwrap_or("");
            format!("{} {group}/{resource}", e["verb"].as_str().unwrap_or(""))
        })
        .collect()
}

/// The replica holding the Lease, from the API server.
pub async fn lease_holder(cluster: &TestCluster) -> Option<String> {
    cluster
        .get("lease", NAMESPACE, "inference-gateway-status")
        .await
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// Status patches of the gateway so far that the API server applied, as (User-Agent, object
/// name) pairs from the audit log.
pub fn status_writes(cluster: &TestCluster) -> Vec<(String, String)> {
    status_patches(cluster, true)
}

/// Every status patch the gateway sent, applied or refused (a `409 Conflict`, say).
pub fn status_attempts(cluster: &TestCluster) -> Vec<(String, String)> {
    status_patches(cluster, false)
}

fn status_patches(cluster: &TestCluster, applied_only: bool) -> Vec<(String, String)> {
    gateway_requests(cluster)
        .into_iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["objectRef"]["subresource"] == "status"
                && (!applied_only || e["responseStatus"]["code"] == 200)
        })
        .map(|e| {
            let agent = e["userAgent"].as_str().unwrap_or("").to_owned();
            (
                agent,
                e["objectRef"]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// `(status, reason)` of the condition `type_` in a conditions list.
pub fn condition(conditions: &Value, type_: &str) -> (String, String) {
    let found = conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#}"));
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (text(&found["status"]), text(&found["reason"]))
}

pub fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// Assert every `(type, status, reason)` of `expected` in a conditions list.
pub fn assert_conditions(conditions: &Value, expected: &[(&str, &str, &str)]) {
    for (type_, status, reason) in expected {
        assert_eq!(
            condition(conditions, type_),
            pair(status, reason),
            "{type_} in {conditions:#}"
        );
    }
}
