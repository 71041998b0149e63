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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::TestCluster;
use testkit::k8s::{BackendRef, HttpRoute, InferenceModel, InferencePool, Manifest, Object, Pod};
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

/// [`cluster`] serving the seed's shape with one Ready pod, on a backend at 127.0.0.`ip`.
async fn one_pod(ip: u8) -> (TestCluster, String, Backend) {
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
        Self::start_with(cluster, token, identity, ready, &[]).await
    }

    /// [`KubeGateway::start`] with extra flags.
    async fn start_with(
        cluster: &TestCluster,
        token: &str,
        identity: &str,
        ready: bool,
        extra: &[&str],
    ) -> KubeGateway {
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
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    async fn snapshot(&self) -> Value {
        snapshot_at(self.admin).await
    }

    /// Wait until `condition` holds on `/debug/snapshot`, at most `deadline`.
    async fn wait_snapshot(
        &self,
        what: &str,
        deadline: Duration,
        condition: impl Fn(&Value) -> bool,
    ) {
        wait_for_snapshot_at(self.admin, what, deadline, condition, || self.log()).await;
    }
}

/// A model-server pod labelled `app: qwen`, as YAML.
fn pod(name: &str, ip: impl Into<IpAddr>, ready: bool) -> String {
    Pod::qwen(name, ip.into(), ready).to_yaml()
}

/// The seed's shape: see [`Manifest::qwen_pool`].
fn objects(http_port: u16, llm_port: u16, port: u16) -> String {
    Manifest::qwen_pool(http_port, llm_port, port).render()
}

/// Audit events of the gateway's ServiceAccount.
fn gateway_requests(cluster: &TestCluster) -> Vec<Value> {
    cluster
        .audit()
        .into_iter()
        .filter(|e| e["user"]["username"] == USER)
        .collect()
}

/// The gateway's requests that RBAC refused, as `verb group/resource[/subresource]` lines.
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
            let group = object["apiGroup"].as_str().unwrap_or("");
            format!("{} {group}/{resource}", e["verb"].as_str().unwrap_or(""))
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
            first_pool_endpoints(s) == vec![address(0), address(1)]
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
            first_pool_endpoints(s).contains(&address(2))
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
            !first_pool_endpoints(s).contains(&address(2))
        })
        .await;

    // Deleted: leaves within 1 s.
    cluster.delete("pod", "default", "qwen-1").await;
    gateway
        .wait_snapshot("a deleted pod leaves", Duration::from_secs(1), |s| {
            first_pool_endpoints(s) == vec![address(0)]
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

/// One verb on one resource that a rule of the shipped RBAC grants.
#[derive(Debug, Clone)]
struct Grant {
    document: usize,
    rule: usize,
    group: String,
    resource: String,
    verb: String,
}

/// Every (resource, verb) pair the shipped ClusterRole and Role grant.
fn grants(documents: &[Value]) -> Vec<Grant> {
    let mut grants = Vec::new();
    for (document, object) in documents.iter().enumerate() {
        let Some(rules) = object["rules"].as_array() else {
            continue;
        };
        for (rule, body) in rules.iter().enumerate() {
            let group = body["apiGroups"][0].as_str().unwrap().to_owned();
            for resource in body["resources"].as_array().unwrap() {
                for verb in body["verbs"].as_array().unwrap() {
                    grants.push(Grant {
                        document,
                        rule,
                        group: group.clone(),
                        resource: resource.as_str().unwrap().to_owned(),
                        verb: verb.as_str().unwrap().to_owned(),
                    });
                }
            }
        }
    }
    grants
}

/// The RBAC documents with `grant` taken out: its rule split into the other resources (all
/// verbs) and its resource (the other verbs).
fn without(documents: &[Value], grant: &Grant) -> Vec<Value> {
    let mut documents = documents.to_vec();
    let rules = documents[grant.document]["rules"].as_array_mut().unwrap();
    let rule = rules.remove(grant.rule);
    let others: Vec<&Value> = rule["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| **r != grant.resource)
        .collect();
    let verbs: Vec<&Value> = rule["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| **v != grant.verb)
        .collect();
    if !others.is_empty() {
        let mut split = rule.clone();
        split["resources"] = json!(others);
        rules.push(split);
    }
    if !verbs.is_empty() {
        let mut split = rule.clone();
        split["resources"] = json!([grant.resource]);
        split["verbs"] = json!(verbs);
        rules.push(split);
    }
    documents
}

/// Every kind the gateway reads and writes status for: the seed's objects, a v1 pool behind its
/// own route, an InferenceModel, and an Envoy BackendTrafficPolicy (its optional CRD installed).
async fn every_kind(cluster: &TestCluster) {
    cluster.install_crds("manifests/crds/optional").await;
    let manifest = Manifest::qwen_pool(free_port(), free_port(), 8000)
        .with(InferencePool::v1("pool-v1", 8000).selector("app", "qwen"))
        .with(
            HttpRoute::new("v1-route")
                .on(testkit::k8s::TEST_GATEWAY, "llm")
                .to(BackendRef::pool_v1("pool-v1")),
        )
        .with(InferenceModel::new("chat", "chat", "pool"));
    cluster.apply(&manifest.render()).await;
    cluster.apply(&pod("qwen-0", [127, 0, 0, 80], true)).await;
    cluster
        .apply(
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: timeout, namespace: default}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: llm-route}]\n  timeout: {http: {requestTimeout: 1h}}\n",
        )
        .await;
}

/// Clear every status the gateway writes and delete its Lease, so a new gateway process has to
/// take the Lease and write every status again.
async fn forget_writes(cluster: &TestCluster) {
    for (resource, name) in [
        (
            "gatewayclass.gateway.networking.k8s.io",
            testkit::k8s::TEST_CLASS,
        ),
        (
            "gateway.gateway.networking.k8s.io",
            testkit::k8s::TEST_GATEWAY,
        ),
        ("httproute.gateway.networking.k8s.io", "llm-route"),
        ("httproute.gateway.networking.k8s.io", "plain"),
        ("httproute.gateway.networking.k8s.io", "v1-route"),
        ("inferencepool.inference.networking.x-k8s.io", "pool"),
        ("inferencepool.inference.networking.k8s.io", "pool-v1"),
        ("inferencemodel.inference.networking.x-k8s.io", "chat"),
    ] {
        cluster
            .kubectl_ok(&[
                "patch",
                resource,
                name,
                "-n",
                "default",
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":null}"#,
            ])
            .await;
    }
    cluster
        .kubectl_ok(&[
            "delete",
            "lease",
            "inference-gateway-status",
            "-n",
            NAMESPACE,
            "--ignore-not-found",
        ])
        .await;
}

/// Each verb on each resource of the shipped ClusterRole and Role, taken away in turn, makes a
/// request the gateway needs fail (RBAC refuses it, as the API server's audit log shows); with
/// the whole role, nothing is refused. So the role grants nothing the gateway does not use.
#[tokio::test]
async fn every_rule_of_the_shipped_role_is_needed_and_the_full_role_is_enough() {
    let _turn = SERIAL.lock().await;
    let (cluster, token) = cluster().await;
    every_kind(&cluster).await;
    let documents = rbac_documents();

    // The full role: ready, every status written, nothing refused.
    forget_writes(&cluster).await;
    let gateway = KubeGateway::start(&cluster, &token, "full-role", true).await;
    wait_until("every status is written", DEADLINE, || async {
        let writes = gateway_requests(&cluster)
            .into_iter()
            .filter(|e| e["verb"] == "patch" && e["objectRef"]["subresource"] == "status")
            .count();
        writes >= 8
    })
    .await;
    assert_eq!(
        refusals(&cluster),
        Vec::<String>::new(),
        "nothing refused with the full role"
    );
    assert!(
        !gateway.log().to_lowercase().contains("forbidden"),
        "{}",
        gateway.log()
    );
    drop(gateway);

    let mut unused = Vec::new();
    for grant in grants(&documents) {
        forget_writes(&cluster).await;
        cluster.apply(&yaml(&without(&documents, &grant))).await;
        let refused_before = refusals(&cluster).len();
        let gateway = KubeGateway::start(&cluster, &token, "reduced-role", false).await;
        let wanted = format!("{} {}/{}", grant.verb, grant.group, grant.resource);
        let start = Instant::now();
        let refused = loop {
            if refusals(&cluster)[refused_before..].contains(&wanted) {
                break true;
            }
            if start.elapsed() > Duration::from_secs(15) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !refused {
            unused.push(wanted);
        }
        drop(gateway);
    }
    cluster.apply(&yaml(&documents)).await;
    assert_eq!(
        unused,
        Vec::<String>::new(),
        "grants the gateway never needed"
    );
}

/// Clients sending completions to `llm` until stopped, counting what they got.
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(llm: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
                let uri = format!("{llm}/v1/completions");
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::SeqCst) {
                        let request = hyper::Request::post(&uri)
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                br#"{"model":"m","prompt":"hello"}"#,
                            )))
                            .unwrap();
                        match client.request(request).await {
                            Ok(response) if response.status() == 200 => {}
                            Ok(response) => failures
                                .lock()
                                .push(format!("status {}", response.status())),
                            Err(e) => failures.lock().push(format!("error {e}")),
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            done,
            failures,
            clients,
        }
    }

    fn served(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Wait until `more` further requests were answered.
    async fn wait_more(&self, what: &str, more: usize) {
        let target = self.served() + more;
        wait_until(what, DEADLINE, || async { self.served() >= target }).await;
    }

    /// Stop the clients; the failures they saw.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.await.unwrap();
        }
        self.failures.lock().clone()
    }
}

/// A cluster (with `flags` for the API server) serving the seed's shape with two Ready pods of
/// three backends, a gateway (with `gateway_flags`) reading it, and traffic flowing.
async fn serving(
    flags: &[&str],
    gateway_flags: &[&str],
    first_ip: u8,
) -> (TestCluster, Vec<Backend>, KubeGateway, Traffic) {
    let cluster = TestCluster::start_with(flags).await;
    let namespace =
        std::fs::read_to_string(repository().join("manifests/deploy/00-namespace.yaml"));
    cluster.apply(&namespace.unwrap()).await;
    cluster.apply(&yaml(&rbac_documents())).await;
    let token = cluster.token(NAMESPACE, SERVICE_ACCOUNT).await;
    let (port, backends) = start_backends(first_ip, 3).await;
    let (http_port, llm_port) = (free_port(), free_port());
    cluster.apply(&objects(http_port, llm_port, port)).await;
    for (i, backend) in backends.iter().enumerate().take(2) {
        cluster
            .apply(&pod(&format!("qwen-{i}"), backend.addr.ip(), true))
            .await;
    }
    let gateway = KubeGateway::start_with(&cluster, &token, "replica-a", true, gateway_flags).await;
    gateway
        .wait_snapshot("two pods serve", DEADLINE, |s| {
            first_pool_endpoints(s).len() == 2
        })
        .await;
    let traffic = Traffic::start(&format!("http://127.0.0.1:{llm_port}"), 4);
    traffic.wait_more("traffic flows", 100).await;
    (cluster, backends, gateway, traffic)
}

/// etcd's history is compacted mid-traffic past every revision the gateway has seen. With the
/// API server's watch cache off, watches are etcd's own, and each watch the gateway resumes from
/// its last resourceVersion (every 3 s here, `--kube-watch-timeout`) gets etcd's real `410 Gone`
/// ("required revision has been compacted"). The gateway relists, keeps following changes, and
/// no request fails.
#[tokio::test]
async fn compaction_past_the_gateways_revision_gives_410_and_the_gateway_relists_without_failing_a_request()
 {
    let _turn = SERIAL.lock().await;
    let (cluster, backends, gateway, traffic) = serving(
        &["--watch-cache=false"],
        &["--kube-watch-timeout", "3s"],
        90,
    )
    .await;
    // Writes the gateway does not watch move etcd's revision past everything it has seen.
    for i in 0..3 {
        cluster
            .apply(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: filler-{i}, namespace: default}}\ndata: {{n: '{i}'}}\n"))
            .await;
    }
    let compacted = cluster.compact().await;
    let gone = |log: &str| {
        log.lines()
            .filter(|l| l.contains("watch failed") && (l.contains("410") || l.contains("Expired")))
            .count()
    };
    wait_until("a resumed watch gets 410 Gone", DEADLINE, || {
        std::future::ready(gone(&gateway.log()) > 0)
    })
    .await;
    wait_until("the gateway relists", DEADLINE, || {
        let log = gateway.log();
        let after = log
            .lines()
            .skip_while(|l| !l.contains("410") && !l.contains("Expired"));
        std::future::ready(after.clone().any(|l| l.contains("relisted")))
    })
    .await;

    // Still following changes: a pod made unready leaves within 1 s.
    cluster
        .apply(&pod("qwen-1", backends[1].addr.ip(), false))
        .await;
    let address = backends[1].addr.to_string();
    gateway
        .wait_snapshot("an unready pod leaves", Duration::from_secs(1), |s| {
            !first_pool_endpoints(s).contains(&address)
        })
        .await;
    traffic.wait_more("traffic continues", 100).await;
    assert_eq!(
        traffic.finish().await,
        Vec::<String>::new(),
        "no request failed"
    );
    assert_eq!(refusals(&cluster), Vec::<String>::new());
    eprintln!(
        "etcd compacted at revision {compacted}; {} watches got 410",
        gone(&gateway.log())
    );
}

/// The API server is stopped mid-traffic and started again (its watch cache starts afresh at
/// etcd's current revision): traffic continues on the last snapshot, no request fails, and the
/// gateway relists and sees a pod that became Ready after the restart.
///
/// A restarting API server answers the first requests before its RBAC caches have synced, with
/// 403s that the gateway retries; that is why this test does not assert that nothing is refused.
#[tokio::test]
async fn an_api_server_restart_mid_traffic_fails_no_request_and_the_gateway_relists() {
    let _turn = SERIAL.lock().await;
    let (mut cluster, backends, gateway, traffic) = serving(&[], &[], 95).await;
    cluster.stop_apiserver().await;
    traffic
        .wait_more("traffic continues without the API server", 300)
        .await;
    cluster.start_apiserver().await;
    cluster
        .apply(&pod("qwen-2", backends[2].addr.ip(), true))
        .await;
    let address = backends[2].addr.to_string();
    gateway
        .wait_snapshot("the gateway relists and sees the new pod", DEADLINE, |s| {
            first_pool_endpoints(s).contains(&address)
        })
        .await;
    traffic
        .wait_more("traffic continues after the restart", 100)
        .await;
    assert_eq!(
        traffic.finish().await,
        Vec::<String>::new(),
        "no request failed"
    );
    assert!(gateway.log().contains("relisted"), "{}", gateway.log());
}

/// Every manifest of the repository passes the real API server's validation (server-side dry
/// run, strict field validation: an unknown field is an error), CRD schemas included. The
/// namespaces they name are created first, and the optional CRDs installed.
#[tokio::test]
async fn every_manifest_passes_the_api_servers_validation() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    cluster.install_crds("manifests/crds/optional").await;
    let directories = [
        "manifests/deploy",
        "manifests/examples/seed",
        "manifests/examples/local",
        "manifests/examples/upstream",
    ];
    let mut namespaces = std::collections::BTreeSet::new();
    for directory in directories {
        for entry in std::fs::read_dir(repository().join(directory)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                for document in serde_yaml::Deserializer::from_str(&text) {
                    let value: Value =
                        serde_yaml::from_value(serde::Deserialize::deserialize(document).unwrap())
                            .unwrap();
                    if let Some(namespace) = value["metadata"]["namespace"].as_str() {
                        namespaces.insert(namespace.to_owned());
                    }
                }
            }
        }
    }
    for namespace in namespaces.iter().filter(|n| *n != "default") {
        cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"
            ))
            .await;
    }
    for directory in directories {
        let path = repository().join(directory).display().to_string();
        let output = cluster
            .kubectl(&[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                &path,
            ])
            .await
            .unwrap_or_else(|e| panic!("{directory} is refused by the API server: {e}"));
        assert!(output.contains("(server dry run)"), "{output}");
    }
}

/// The replica holding the Lease, from the API server.
async fn lease_holder(cluster: &TestCluster) -> Option<String> {
    cluster
        .get("lease", NAMESPACE, "inference-gateway-status")
        .await
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// Status patches of the gateway so far, as (User-Agent, object name) pairs from the audit log.
fn status_writes(cluster: &TestCluster) -> Vec<(String, String)> {
    gateway_requests(cluster)
        .into_iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["objectRef"]["subresource"] == "status"
                && e["responseStatus"]["code"] == 200
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

/// Two replicas elect one status writer through the Lease (2 s here); when the holder is killed
/// (no release), the other takes the Lease over within the lease time plus the two retry periods
/// (0.4 s each) it may take to notice, and from then on only it writes status.
#[tokio::test]
async fn two_replicas_elect_one_status_writer_and_the_other_takes_over_when_it_is_killed() {
    let _turn = SERIAL.lock().await;
    let (cluster, token, _backend) = one_pod(100).await;
    let a = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    let b = KubeGateway::start(&cluster, &token, "replica-b", true).await;
    wait_until(
        "a replica holds the Lease and status is written",
        DEADLINE,
        || async { lease_holder(&cluster).await.is_some() && !status_writes(&cluster).is_empty() },
    )
    .await;
    let leader_identity = lease_holder(&cluster).await.unwrap();
    let (leader, follower, follower_identity) = match leader_identity.as_str() {
        "replica-a" => (a, b, "replica-b"),
        _ => (b, a, "replica-a"),
    };
    let writes = status_writes(&cluster);
    assert!(
        writes
            .iter()
            .all(|(agent, _)| agent.contains(&format!("({leader_identity})"))),
        "only the holder writes: {writes:?}"
    );

    // Killed, it cannot release the Lease: the follower waits for it to expire.
    let mut leader = leader;
    leader.child.kill().await.unwrap();
    let killed = Instant::now();
    let takeover = Duration::from_millis(2000 + 2 * 400);
    wait_until("the follower takes the Lease over", takeover, || async {
        lease_holder(&cluster).await.as_deref() == Some(follower_identity)
    })
    .await;
    eprintln!("taken over {:?} after the kill", killed.elapsed());

    // A change of status is now written by the new holder only.
    let before = status_writes(&cluster).len();
    let mut route = cluster
        .get(
            "httproute.gateway.networking.k8s.io",
            "default",
            "llm-route",
        )
        .await
        .unwrap();
    route["spec"]["parentRefs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": testkit::k8s::TEST_GATEWAY, "sectionName": "missing"}));
    let route = json!({
        "apiVersion": route["apiVersion"], "kind": "HTTPRoute",
        "metadata": {"name": "llm-route", "namespace": "default"}, "spec": route["spec"],
    });
    cluster.apply(&route.to_string()).await;
    wait_until(
        "the new holder writes the route's status",
        DEADLINE,
        || async {
            status_writes(&cluster)[before..]
                .iter()
                .any(|(_, name)| name == "llm-route")
        },
    )
    .await;
    let after = status_writes(&cluster)[before..].to_vec();
    assert!(
        after
            .iter()
            .all(|(agent, _)| agent.contains(&format!("({follower_identity})"))),
        "after the takeover only the new holder writes: {after:?}"
    );
    assert_eq!(refusals(&cluster), Vec::<String>::new());
    drop(follower);
}

/// `(status, reason)` of the condition `type_` in a conditions list.
fn condition(conditions: &Value, type_: &str) -> (String, String) {
    let found = conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#}"));
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (text(&found["status"]), text(&found["reason"]))
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// Assert every `(type, status, reason)` of `expected` in a conditions list.
fn assert_conditions(conditions: &Value, expected: &[(&str, &str, &str)]) {
    for (type_, status, reason) in expected {
        assert_eq!(
            condition(conditions, type_),
            pair(status, reason),
            "{type_} in {conditions:#}"
        );
    }
}

/// Objects whose statuses cover every kind the gateway writes: a v1 pool with an endpoint
/// picker, a v1alpha2 pool with an unknown strategy (left out), a route with a missing parent
/// section and a missing backend, an InferenceModel, and a route another controller also writes.
const STATUS_OBJECTS: &str = "
apiVersion: v1
kind: Service
metadata: {name: picker, namespace: default}
spec: {selector: {app: picker}, ports: [{port: 9002}]}
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool-v1, namespace: default}
spec:
  selector: {matchLabels: {app: qwen}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: picker, port: {number: 9002}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: broken, namespace: default, annotations: {inference.networking.x-k8s.io/routing-strategy: FASTEST}}
spec: {selector: {app: qwen}, targetPortNumber: 8000, extensionRef: {name: picker, portNumber: 9002}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: more, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: llm}, {name: gw, sectionName: nope}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool-v1}]
  - matches: [{path: {type: PathPrefix, value: /broken}}]
    backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: broken}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat, namespace: default}
spec: {modelName: llama, poolRef: {name: pool}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: foreign, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{kind: Service, name: qwen, port: 80}]}]
status:
  parents:
  - parentRef: {name: gw}
    controllerName: example.com/other
    conditions: [{type: Accepted, status: 'True', reason: Accepted, message: theirs, lastTransitionTime: '2026-01-01T00:00:00Z'}]
";

/// Every status the gateway writes passes the real CRD schemas (no patch refused), carries the
/// conditions and reasons of the Gateway API and Inference Extension specs, and leaves another
/// controller's HTTPRoute entry alone.
#[tokio::test]
async fn statuses_pass_the_crd_schemas_with_the_conditions_and_reasons_of_the_specs() {
    let _turn = SERIAL.lock().await;
    let (cluster, token, _backend) = one_pod(105).await;
    cluster.apply(STATUS_OBJECTS).await;
    let _gateway = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    let get = |resource: &'static str, name: &'static str| {
        let cluster = &cluster;
        async move { cluster.get(resource, "default", name).await.unwrap() }
    };
    wait_until("statuses are written", DEADLINE, || async {
        let model = get("inferencemodel.inference.networking.x-k8s.io", "chat").await;
        let route = get("httproute.gateway.networking.k8s.io", "more").await;
        let pool = get("inferencepool.inference.networking.k8s.io", "pool-v1").await;
        model["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted"))
            && route["status"]["parents"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
            && pool["status"]["parents"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
    })
    .await;

    let class = get(
        "gatewayclass.gateway.networking.k8s.io",
        testkit::k8s::TEST_CLASS,
    )
    .await;
    assert_eq!(
        condition(&class["status"]["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    let gw = get(
        "gateway.gateway.networking.k8s.io",
        testkit::k8s::TEST_GATEWAY,
    )
    .await;
    assert_eq!(
        condition(&gw["status"]["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        condition(&gw["status"]["conditions"], "Programmed"),
        pair("True", "Programmed")
    );

    let more = get("httproute.gateway.networking.k8s.io", "more").await;
    let parents = more["status"]["parents"].as_array().unwrap();
    let section = |name: &str| {
        parents
            .iter()
            .find(|p| p["parentRef"]["sectionName"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        condition(&section("llm")["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        condition(&section("nope")["conditions"], "Accepted"),
        pair("False", "NoMatchingParent")
    );

    let foreign = get("httproute.gateway.networking.k8s.io", "foreign").await;
    let controllers: Vec<&str> = foreign["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["controllerName"].as_str().unwrap())
        .collect();
    assert!(
        controllers.contains(&"example.com/other"),
        "the other controller's entry is kept: {controllers:?}"
    );
    assert!(
        controllers.contains(&"inference-gateway.dev/controller"),
        "{controllers:?}"
    );

    let pool_v1 = get("inferencepool.inference.networking.k8s.io", "pool-v1").await;
    let parent = &pool_v1["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["group"], "gateway.networking.k8s.io");
    assert_conditions(
        &parent["conditions"],
        &[
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ],
    );

    let broken = get("inferencepool.inference.networking.x-k8s.io", "broken").await;
    let parent = &broken["status"]["parent"][0];
    assert_eq!(
        condition(&parent["conditions"], "Accepted"),
        pair("False", "NotSupportedByGateway")
    );
    let model = get("inferencemodel.inference.networking.x-k8s.io", "chat").await;
    assert_eq!(
        condition(&model["status"]["conditions"], "Accepted"),
        pair("True", "Accepted")
    );

    // The API server accepted every status patch: nothing failed its schema or was refused.
    let refused: Vec<Value> = gateway_requests(&cluster)
        .into_iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| c >= 400 && c != 409)
        })
        .collect();
    assert!(refused.is_empty(), "status patches refused: {refused:#?}");
}

/// The pool's routing-strategy annotation, written with `kubectl annotate`, switches the
/// strategy of the running gateway.
#[tokio::test]
async fn a_pool_annotation_switches_the_strategy() {
    let _turn = SERIAL.lock().await;
    let (cluster, token, _backend) = one_pod(110).await;
    let gateway = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    let strategy = |s: &Value| {
        s["pools"][0]["strategy"]["requested"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        strategy(&gateway.snapshot().await).as_deref(),
        Some("DEFAULT")
    );
    cluster
        .kubectl_ok(&[
            "annotate",
            "inferencepool.inference.networking.x-k8s.io",
            "pool",
            "inference.networking.x-k8s.io/routing-strategy=PREFIX_CACHE",
        ])
        .await;
    gateway
        .wait_snapshot("the strategy switches", DEADLINE, |s| {
            strategy(s).as_deref() == Some("PREFIX_CACHE")
        })
        .await;
    assert_eq!(
        gateway.snapshot().await["pools"][0]["strategy"]["implementation"],
        "PREFIX_CACHE"
    );
}

/// The seed, as written, through kubectl (`scripts/kube-demo.sh`, [`testkit::kube_demo`]): the
/// CRDs, `manifests/deploy/` and `manifests/examples/seed/` applied with `kubectl apply -f`, five
/// Ready pods at the seed Deployment's simulators, the gateway as its ServiceAccount; the seed's
/// two requests succeed on ports 8080 and 8081 at the address the Gateway's status gives, and the
/// statuses kubectl shows are the ones the specs ask for.
#[tokio::test]
async fn the_seed_as_written_through_kubectl_answers_on_both_ports() {
    use testkit::kube_demo::{KubeDemo, KubeDemoPlan};
    let _turn = SERIAL.lock().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let plan = KubeDemoPlan {
        gateway_binary: env!("CARGO_BIN_EXE_inference-gateway").into(),
        admin,
        time_scale: 20.0,
    };
    let demo = KubeDemo::start(&plan, |_| {}).await.unwrap();
    assert_eq!(demo.gateway_host().await.as_deref(), Some("127.0.0.1"));
    let mut endpoints = first_pool_endpoints(&snapshot_at(admin).await);
    endpoints.sort();
    assert_eq!(
        endpoints,
        (2..=6)
            .map(|i| format!("127.0.0.{i}:8000"))
            .collect::<Vec<_>>()
    );

    let answers = demo.seed_requests().await.unwrap();
    assert_eq!(answers.len(), 2);
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["model"], "/model/qwen", "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 100, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    }
    assert!(answers[0].curl.contains(":8080/"));
    assert!(answers[1].curl.contains(":8081/"));

    let yaml = demo.statuses_yaml().await;
    let list: Value = serde_yaml::from_str(&yaml).unwrap();
    let items = list["items"].as_array().unwrap();
    let item = |kind: &str, name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in\n{yaml}"))
    };
    let gateway = item("Gateway", "qwen-inference-gateway");
    assert_conditions(
        &gateway["status"]["conditions"],
        &[
            ("Accepted", "True", "Accepted"),
            ("Programmed", "True", "Programmed"),
        ],
    );
    assert_eq!(
        gateway["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
    for listener in gateway["status"]["listeners"].as_array().unwrap() {
        assert_eq!(listener["attachedRoutes"], 1, "{listener}");
    }
    for route in ["qwen-backend", "qwen-backend-no-inference"] {
        assert_conditions(
            &item("HTTPRoute", route)["status"]["parents"][0]["conditions"],
            &[
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "True", "ResolvedRefs"),
            ],
        );
    }
    // The seed's extensionRef names Envoy Gateway's EPP Service, which this cluster has not.
    assert_conditions(
        &item("InferencePool", "vllm-qwen-pool")["status"]["parent"][0]["conditions"],
        &[
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "False", "InvalidExtensionRef"),
        ],
    );
    assert_conditions(
        &item("InferenceModel", "inferencemodel-qwen")["status"]["conditions"],
        &[("Accepted", "True", "Accepted")],
    );
}
