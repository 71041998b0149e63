//! The kube source against a real Kubernetes API server: etcd and kube-apiserver from
//! `tools/k8s` ([`testkit::cluster`]), the shipped RBAC (`manifests/deploy/10-rbac.yaml`)
//! applied, and the gateway running with a TokenRequest token of its ServiceAccount, so every
//! list, watch, status patch and Lease call meets real RBAC. Pods are objects whose status the
//! test writes (there is no kubelet), pointing at HTTP backends on loopback addresses.
//!
//! Each test starts its own cluster (about 5 s); the tests of this binary take turns
//! ([`SERIAL`]) so two control planes never share the 2 cores. Waits are on conditions with
//! deadlines; "within 1 s" is a deadline of one second after the write returned.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::TestCluster;
use testkit::k8s::{InferencePool, Manifest, Object, Pod};
use testkit::*;

/// The tests take turns: each runs a control plane of its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The gateway's ServiceAccount, as `manifests/deploy/10-rbac.yaml` names it.
const NAMESPACE: &str = "inference-gateway";
const SERVICE_ACCOUNT: &str = "inference-gateway";
const USER: &str = "system:serviceaccount:inference-gateway:inference-gateway";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The shipped RBAC manifest's documents.
fn rbac_documents() -> Vec<Value> {
    let text = std::fs::read_to_string(repository().join("manifests/deploy/10-rbac.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::from_value(serde::Deserialize::deserialize(d).unwrap()).unwrap())
        .collect()
}

fn yaml(documents: &[Value]) -> String {
    documents
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A cluster with the gateway's namespace and RBAC applied, and a token for its ServiceAccount.
async fn cluster() -> (TestCluster, String) {
    let cluster = TestCluster::start().await;
    let namespace =
        std::fs::read_to_string(repository().join("manifests/deploy/00-namespace.yaml"));
    cluster.apply(&namespace.unwrap()).await;
    cluster.apply(&yaml(&rbac_documents())).await;
    let token = cluster.token(NAMESPACE, SERVICE_ACCOUNT).await;
    (cluster, token)
}

/// A gateway process with `--source kube`, authenticated as its ServiceAccount.
struct KubeGateway {
    child: tokio::process::Child,
    admin: SocketAddr,
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
    async fn start(cluster: &TestCluster, token: &str, identity: &str, ready: bool) -> KubeGateway {
        let dir = std::env::temp_dir().join(format!("igw-kube-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = cluster.token_kubeconfig(&dir, token, NAMESPACE);
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
            .args(["--source", "kube", "--kubeconfig"])
            .arg(&kubeconfig)
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
            .env(
                "RUST_LOG",
                std::env::var("IGW_TEST_LOG").unwrap_or_else(|_| "info".into()),
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
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    async fn snapshot(&self) -> Value {
        let (_, body) = get(&format!("http://{}/debug/snapshot", self.admin)).await;
        serde_json::from_slice(&body).unwrap()
    }

    /// Wait until `condition` holds on `/debug/snapshot`, at most `deadline`.
    async fn wait_snapshot(
        &self,
        what: &str,
        deadline: Duration,
        condition: impl Fn(&Value) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let snapshot = self.snapshot().await;
            if condition(&snapshot) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "{what}: not within {deadline:?}; snapshot: {:#}\ngateway log:\n{}",
                snapshot["pools"],
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Addresses of the first pool's endpoints.
fn endpoints(snapshot: &Value) -> Vec<String> {
    snapshot["pools"][0]["endpoints"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["address"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A model-server pod labelled `app: qwen`.
fn pod(name: &str, ip: impl Into<IpAddr>, ready: bool) -> String {
    Pod::new(name, ip.into())
        .label("app", "qwen")
        .container("vllm", "vllm-sim", 8000)
        .running()
        .ready(ready)
        .to_yaml()
}

/// The seed's shape: a class, a Gateway with `http` and `llm` listeners, a v1alpha2 pool selecting
/// `app: qwen` on `port` behind the `llm` listener, and a Service behind the `http` one.
fn objects(http_port: u16, llm_port: u16, port: u16) -> String {
    Manifest::test_gateway(http_port, llm_port)
        .with_pool(InferencePool::new("pool", port).selector("app", "qwen"), [])
        .with_plain_service("qwen", "qwen", port)
        .render()
}

/// Audit events of the gateway's ServiceAccount.
fn gateway_requests(cluster: &TestCluster) -> Vec<Value> {
    cluster
        .audit()
        .into_iter()
        .filter(|e| e["user"]["username"] == USER)
        .collect()
}

/// The gateway's requests that RBAC refused, as `verb resource[/subresource]` lines.
fn refusals(cluster: &TestCluster) -> Vec<String> {
    gateway_requests(cluster)
        .into_iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| {
            let object = &e["objectRef"];
            let mut resource = object["resource"].as_str().unwrap_or("").to_owned();
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            format!("{} {resource}", e["verb"].as_str().unwrap_or(""))
        })
        .collect()
}

#[tokio::test]
async fn pods_join_when_ready_and_leave_when_unready_or_deleted_within_a_second() {
    let _turn = SERIAL.lock().await;
    let (cluster, token) = cluster().await;
    let (port, backends) = start_backends(70, 3).await;
    let (http_port, llm_port) = (free_port(), free_port());
    cluster.apply(&objects(http_port, llm_port, port)).await;
    for (i, backend) in backends.iter().enumerate().take(2) {
        cluster
            .apply(&pod(&format!("qwen-{i}"), backend.addr.ip(), true))
            .await;
    }
    let gateway = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    let address = |i: usize| backends[i].addr.to_string();
    gateway
        .wait_snapshot("the first two pods serve", DEADLINE, |s| {
            endpoints(s) == vec![address(0), address(1)]
        })
        .await;

    // Not Ready yet: not an endpoint. Once Ready, it joins within 1 s of the status write.
    cluster
        .apply(&pod("qwen-2", backends[2].addr.ip(), false))
        .await;
    cluster
        .apply(&pod("qwen-2", backends[2].addr.ip(), true))
        .await;
    gateway
        .wait_snapshot("a Ready pod joins", Duration::from_secs(1), |s| {
            endpoints(s).contains(&address(2))
        })
        .await;
    let llm = format!("http://127.0.0.1:{llm_port}");
    let (status, _) = post(
        &client(),
        &format!("{llm}/v1/completions"),
        &[],
        r#"{"model":"m"}"#,
    )
    .await;
    assert_eq!(status, 200);

    // Made unready: leaves within 1 s.
    cluster
        .apply(&pod("qwen-2", backends[2].addr.ip(), false))
        .await;
    gateway
        .wait_snapshot("an unready pod leaves", Duration::from_secs(1), |s| {
            !endpoints(s).contains(&address(2))
        })
        .await;

    // Deleted: leaves within 1 s.
    cluster.delete("pod", "default", "qwen-1").await;
    gateway
        .wait_snapshot("a deleted pod leaves", Duration::from_secs(1), |s| {
            endpoints(s) == vec![address(0)]
        })
        .await;

    // Watched, with bookmarks, and nothing the shipped role does not allow.
    let requests = gateway_requests(&cluster);
    let pod_watches = requests.iter().filter(|e| {
        e["verb"] == "watch"
            && e["objectRef"]["resource"] == "pods"
            && e["requestURI"]
                .as_str()
                .unwrap()
                .contains("allowWatchBookmarks=true")
    });
    assert!(pod_watches.count() >= 1, "pods are watched with bookmarks");
    assert_eq!(
        refusals(&cluster),
        Vec::<String>::new(),
        "no request refused"
    );
    let log = gateway.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "no authorization error logged:\n{log}"
    );
}
