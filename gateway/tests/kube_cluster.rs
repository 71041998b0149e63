//! The kube source against a real Kubernetes API server: etcd and kube-apiserver from
//! `tools/k8s` ([`testkit::cluster`]), the shipped RBAC (`manifests/deploy/10-rbac.yaml`)
//! applied, and the gateway running with a TokenRequest token of its ServiceAccount, so every
//! list, watch, status patch and Lease call meets real RBAC. Pods are objects whose status the
//! test writes (there is no kubelet), pointing at HTTP backends on loopback addresses.
//!
//! This file covers membership, RBAC, compaction, API-server restarts, manifest validation and
//! the seed through kubectl; `kube_cluster_status.rs` covers statuses, the Lease, `--validate`
//! and namespaces; both share `kube_support/`.
//!
//! Each test starts its own cluster (about 5 s); the tests of this binary take turns
//! ([`SERIAL`]) so two control planes never share the 2 cores. Waits are on conditions with
//! deadlines; "within 1 s" is a deadline of one second after the write returned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::cluster::TestCluster;
use testkit::k8s::{BackendRef, HttpRoute, InferenceModel, InferencePool, Manifest};
use testkit::*;

mod kube_support;
use kube_support::*;

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
/// own route, an InferenceModel, an InferenceObjective and an InferenceModelRewrite of each API
/// group, and an Envoy BackendTrafficPolicy (its optional CRD installed).
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
    for group in ["llm-d.ai", "inference.networking.x-k8s.io"] {
        cluster
            .apply(&format!(
                "apiVersion: {group}/v1alpha2\nkind: InferenceObjective\nmetadata: {{name: objective-{group}, namespace: default}}\nspec: {{priority: 1, poolRef: {{name: pool}}}}\n---\n\
                 apiVersion: {group}/v1alpha2\nkind: InferenceModelRewrite\nmetadata: {{name: rewrite-{group}, namespace: default}}\nspec:\n  poolRef: {{name: pool}}\n  rules: [{{targets: [{{modelRewrite: chat}}]}}]\n"
            ))
            .await;
    }
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
        ("inferenceobjective.llm-d.ai", "objective-llm-d.ai"),
        ("inferencemodelrewrite.llm-d.ai", "rewrite-llm-d.ai"),
        (
            "inferenceobjective.inference.networking.x-k8s.io",
            "objective-inference.networking.x-k8s.io",
        ),
        (
            "inferencemodelrewrite.inference.networking.x-k8s.io",
            "rewrite-inference.networking.x-k8s.io",
        ),
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
        // A write is made only when the status or the Lease is not already as the gateway wants
        // it; reads happen at every start.
        if !matches!(grant.verb.as_str(), "list" | "watch") {
            forget_writes(&cluster).await;
        }
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
    let (cluster, token) = cluster_with(flags).await;
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
        "manifests/examples/current",
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
