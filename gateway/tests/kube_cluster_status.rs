//! Status, Lease and namespace behaviour of the kube source against a real Kubernetes API server
//! (see `kube_cluster.rs` for the setup): the statuses every kind gets, as the Gateway API and
//! Inference Extension specs name their conditions and reasons; the Lease that elects one writer
//! among replicas; `--validate`; Gateways and pools in several namespaces.
//!
//! Each test starts its own cluster; the tests take turns ([`SERIAL`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::k8s::{
    self, BackendRef, GatewayClass, HttpRoute, InferenceModel, InferencePool, Manifest, Object,
    Pod, TEST_CLASS,
};
use testkit::*;

mod kube_support;
use kube_support::*;

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
    // A change while both run: both see it, only the holder writes (the other does not even try).
    add_parent_section(&cluster, "missing").await;
    wait_until("the holder writes the route's status", DEADLINE, || async {
        route_sections(&cluster)
            .await
            .contains(&"missing".to_owned())
    })
    .await;
    let attempts = status_attempts(&cluster);
    assert!(
        attempts
            .iter()
            .all(|(agent, _)| agent.contains(&format!("({leader_identity})"))),
        "only the holder writes: {attempts:?}"
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
    let before = status_attempts(&cluster).len();
    add_parent_section(&cluster, "missing-too").await;
    wait_until(
        "the new holder writes the route's status",
        DEADLINE,
        || async {
            route_sections(&cluster)
                .await
                .contains(&"missing-too".to_owned())
        },
    )
    .await;
    let after = status_attempts(&cluster)[before..].to_vec();
    assert!(
        after
            .iter()
            .all(|(agent, _)| agent.contains(&format!("({follower_identity})"))),
        "after the takeover only the new holder writes: {after:?}"
    );
    assert_eq!(refusals(&cluster), Vec::<String>::new());
    drop(follower);
}

/// The route `llm-route`, as the API server has it.
async fn llm_route(cluster: &testkit::cluster::TestCluster) -> Value {
    cluster
        .get(
            "httproute.gateway.networking.k8s.io",
            "default",
            "llm-route",
        )
        .await
        .unwrap()
}

/// Add a parentRef to section `section` of the test Gateway to the route `llm-route`.
async fn add_parent_section(cluster: &testkit::cluster::TestCluster, section: &str) {
    let route = llm_route(cluster).await;
    let mut spec = route["spec"].clone();
    spec["parentRefs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": testkit::k8s::TEST_GATEWAY, "sectionName": section}));
    let route = json!({
        "apiVersion": route["apiVersion"], "kind": "HTTPRoute",
        "metadata": {"name": "llm-route", "namespace": "default"}, "spec": spec,
    });
    cluster.apply(&route.to_string()).await;
}

/// The sections named by the status parents of `llm-route`.
async fn route_sections(cluster: &testkit::cluster::TestCluster) -> Vec<String> {
    llm_route(cluster).await["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["parentRef"]["sectionName"].as_str().map(str::to_owned))
        .collect()
}

/// Objects whose statuses cover every kind the gateway writes: a v1 pool with an endpoint
/// picker, a v1alpha2 pool with an unknown strategy (left out) and the placeholder status its CRD
/// default writes, a route with a missing parent section and a missing backend, an InferenceModel
/// with a placeholder condition, and a route another controller also writes.
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
status:
  parent:
  - parentRef: {kind: Status, name: default}
    conditions: [{type: Accepted, status: Unknown, reason: Pending, message: Waiting for controller, lastTransitionTime: '1970-01-01T00:00:00Z'}]
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
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: missing}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat, namespace: default}
spec: {modelName: llama, poolRef: {name: pool}}
status:
  conditions: [{type: Ready, status: Unknown, reason: Pending, message: Waiting for controller, lastTransitionTime: '1970-01-01T00:00:00Z'}]
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
    // A listener of a protocol the gateway does not serve.
    cluster
        .kubectl_ok(&[
            "patch",
            "gateway.gateway.networking.k8s.io",
            testkit::k8s::TEST_GATEWAY,
            "--type=json",
            "-p",
            &json!([{"op": "add", "path": "/spec/listeners/-",
                "value": {"name": "tcp", "protocol": "TCP", "port": free_port()}}])
            .to_string(),
        ])
        .await;
    // A second InferenceModel claiming `llama`, created in a later second than the first (the
    // resolution of creationTimestamp; the API server runs on this machine's clock), so the
    // first one keeps the name.
    let applied = unix_seconds();
    wait_until("the next second", DEADLINE, || {
        std::future::ready(unix_seconds() > applied)
    })
    .await;
    cluster
        .apply(&InferenceModel::new("newer", "llama", "pool").to_yaml())
        .await;
    let gateway = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    let get = |resource: &'static str, name: &'static str| {
        let cluster = &cluster;
        async move { cluster.get(resource, "default", name).await.unwrap() }
    };
    const MODEL: &str = "inferencemodel.inference.networking.x-k8s.io";
    const ROUTE: &str = "httproute.gateway.networking.k8s.io";
    const GATEWAY: &str = "gateway.gateway.networking.k8s.io";
    const POOL_V1ALPHA2: &str = "inferencepool.inference.networking.x-k8s.io";
    const POOL_V1: &str = "inferencepool.inference.networking.k8s.io";
    wait_until("statuses are written", DEADLINE, || async {
        let accepted = |object: &Value| {
            object["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted"))
        };
        accepted(&get(MODEL, "chat").await)
            && accepted(&get(MODEL, "newer").await)
            && get(ROUTE, "more").await["status"]["parents"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
            && get(POOL_V1, "pool-v1").await["status"]["parents"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
            && get(GATEWAY, testkit::k8s::TEST_GATEWAY).await["status"]["listeners"]
                .as_array()
                .is_some_and(|l| l.len() == 3)
    })
    .await;

    // A bad object does not stop the rest: the broken pool is left out, the others serve.
    let llm = format!(
        "http://127.0.0.1:{}",
        get(GATEWAY, testkit::k8s::TEST_GATEWAY).await["spec"]["listeners"][1]["port"]
    );
    let (code, _) = post(&client(), &format!("{llm}/broken"), &[], r#"{"model":"m"}"#).await;
    assert_eq!(code, 500, "the broken pool's share gets 500");
    let (code, body) = post(
        &client(),
        &format!("{llm}/other"),
        &[],
        r#"{"model":"llama"}"#,
    )
    .await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    let class = get(
        "gatewayclass.gateway.networking.k8s.io",
        testkit::k8s::TEST_CLASS,
    )
    .await;
    assert_conditions(
        &class["status"]["conditions"],
        &[("Accepted", "True", "Accepted")],
    );
    let gw = get(GATEWAY, testkit::k8s::TEST_GATEWAY).await;
    assert_conditions(
        &gw["status"]["conditions"],
        &[
            ("Accepted", "True", "Accepted"),
            ("Programmed", "True", "Programmed"),
        ],
    );
    let listener = |name: &str| {
        gw["status"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {gw:#}"))
            .clone()
    };
    let http = listener("http");
    assert_eq!(
        http["attachedRoutes"], 2,
        "plain and foreign attach to http"
    );
    assert_conditions(
        &http["conditions"],
        &[
            ("Programmed", "True", "Programmed"),
            ("Conflicted", "False", "NoConflicts"),
        ],
    );
    assert_eq!(http["supportedKinds"][0]["kind"], "HTTPRoute");
    assert_eq!(
        listener("llm")["attachedRoutes"],
        3,
        "llm-route, more and foreign"
    );
    let tcp = listener("tcp");
    assert_conditions(
        &tcp["conditions"],
        &[
            ("Accepted", "False", "UnsupportedProtocol"),
            ("Programmed", "False", "Invalid"),
        ],
    );
    assert_eq!(tcp["attachedRoutes"], 0);

    let more = get(ROUTE, "more").await;
    let parents = more["status"]["parents"].as_array().unwrap();
    let section = |name: &str| {
        parents
            .iter()
            .find(|p| p["parentRef"]["sectionName"] == name)
            .unwrap()
            .clone()
    };
    let llm_parent = section("llm");
    assert_eq!(
        llm_parent["controllerName"],
        "inference-gateway.dev/controller"
    );
    assert_eq!(llm_parent["parentRef"]["kind"], "Gateway");
    assert_conditions(
        &llm_parent["conditions"],
        &[
            ("Accepted", "True", "Accepted"),
            // The pool `missing` does not exist.
            ("ResolvedRefs", "False", "BackendNotFound"),
        ],
    );
    assert_conditions(
        &section("nope")["conditions"],
        &[("Accepted", "False", "NoMatchingParent")],
    );

    let foreign = get(ROUTE, "foreign").await;
    let controllers: Vec<&str> = foreign["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["controllerName"].as_str().unwrap())
        .collect();
    assert_eq!(
        controllers,
        ["example.com/other", "inference-gateway.dev/controller"],
        "the other controller's entry is kept"
    );

    let pool = get(POOL_V1ALPHA2, "pool").await;
    let parent = &pool["status"]["parent"][0];
    assert_eq!(parent["parentRef"]["kind"], "Gateway");
    assert_eq!(parent["parentRef"]["name"], testkit::k8s::TEST_GATEWAY);
    assert_conditions(&parent["conditions"], &[("Accepted", "True", "Accepted")]);

    let pool_v1 = get(POOL_V1, "pool-v1").await;
    let parent = &pool_v1["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "inference-gateway.dev/controller");
    assert_eq!(parent["parentRef"]["group"], "gateway.networking.k8s.io");
    assert_conditions(
        &parent["conditions"],
        &[
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ],
    );

    let broken = get(POOL_V1ALPHA2, "broken").await;
    let parents = broken["status"]["parent"].as_array().unwrap();
    assert_eq!(
        parents.len(),
        1,
        "the CRD's placeholder entry is replaced: {parents:#?}"
    );
    assert_conditions(
        &parents[0]["conditions"],
        &[("Accepted", "False", "NotSupportedByGateway")],
    );

    let chat = get(MODEL, "chat").await;
    let conditions = &chat["status"]["conditions"];
    assert_conditions(conditions, &[("Accepted", "True", "Accepted")]);
    assert_eq!(
        conditions.as_array().unwrap().len(),
        1,
        "the Ready/Pending placeholder is gone: {conditions:#}"
    );
    assert_conditions(
        &get(MODEL, "newer").await["status"]["conditions"],
        &[("Accepted", "False", "ModelNameInUse")],
    );

    // Nothing changes, so nothing more is written: statuses settle.
    let writes = status_writes(&cluster).len();
    let generation = gateway.snapshot().await["generation"].as_u64().unwrap();
    cluster.apply(&pod("qwen-9", [127, 0, 0, 99], true)).await;
    gateway
        .wait_snapshot("the rebuild after a pod change", DEADLINE, |s| {
            s["generation"].as_u64().unwrap() > generation
        })
        .await;
    cluster.delete("pod", "default", "qwen-9").await;
    gateway
        .wait_snapshot("the rebuild after the pod's deletion", DEADLINE, |s| {
            first_pool_endpoints(s).len() == 1
        })
        .await;
    let after = status_writes(&cluster).len();
    assert!(
        after <= writes + 3,
        "unchanged statuses are not rewritten ({writes} then {after})"
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

/// InferenceObjectives and InferenceModelRewrites of both groups, as `kubectl` applies them.
/// `interactive` exists in both groups: the llm-d.ai one (priority 7) is the one applied.
const APIX_OBJECTS: &str = "
apiVersion: llm-d.ai/v1alpha2
kind: InferenceModelRewrite
metadata: {name: alias, namespace: default}
spec:
  poolRef: {name: pool}
  rules:
  - matches: [{model: {type: Exact, value: friendly-name}}]
    targets: [{modelRewrite: /model/qwen}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: fallback, namespace: default}
spec:
  poolRef: {group: inference.networking.k8s.io, name: pool}
  rules:
  - targets: [{modelRewrite: fallback-model}]
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: interactive, namespace: default}
spec: {priority: 7, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: interactive, namespace: default}
spec: {priority: 1, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch, namespace: default}
spec: {priority: -2, poolRef: {name: pool}}
";

/// Objectives and rewrites of both API groups are watched, applied to requests and accepted in
/// their status; of an objective defined in both groups, only the llm-d.ai one applies and gets a
/// status.
#[tokio::test]
async fn objectives_and_rewrites_of_both_groups_are_applied_and_accepted() {
    let _turn = SERIAL.lock().await;
    let (cluster, token, backend) = one_pod(106).await;
    cluster.apply(APIX_OBJECTS).await;
    let gateway = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    const LLMD_OBJECTIVE: &str = "inferenceobjective.llm-d.ai";
    const XK8S_OBJECTIVE: &str = "inferenceobjective.inference.networking.x-k8s.io";
    const LLMD_REWRITE: &str = "inferencemodelrewrite.llm-d.ai";
    const XK8S_REWRITE: &str = "inferencemodelrewrite.inference.networking.x-k8s.io";
    let get = |resource: &'static str, name: &'static str| {
        let cluster = &cluster;
        async move { cluster.get(resource, "default", name).await.unwrap() }
    };
    wait_until("objectives and rewrites are accepted", DEADLINE, || async {
        let accepted = |object: &Value| {
            object["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted"))
        };
        accepted(&get(LLMD_OBJECTIVE, "interactive").await)
            && accepted(&get(XK8S_OBJECTIVE, "batch").await)
            && accepted(&get(LLMD_REWRITE, "alias").await)
            && accepted(&get(XK8S_REWRITE, "fallback").await)
    })
    .await;
    for (resource, name) in [
        (LLMD_OBJECTIVE, "interactive"),
        (XK8S_OBJECTIVE, "batch"),
        (LLMD_REWRITE, "alias"),
        (XK8S_REWRITE, "fallback"),
    ] {
        assert_conditions(
            &get(resource, name).await["status"]["conditions"],
            &[("Accepted", "True", "Accepted")],
        );
    }
    assert!(
        get(XK8S_OBJECTIVE, "interactive").await["status"].is_null(),
        "the shadowed objective gets no status"
    );
    let snapshot = gateway.snapshot().await;
    let pool = &snapshot["pools"][0];
    assert_eq!(pool["objectives"], json!({"batch": -2, "interactive": 7}));
    assert_eq!(
        pool["rewrites"]["exact"]["friendly-name"]["object"],
        "default/alias"
    );

    let llm = format!(
        "http://127.0.0.1:{}",
        get(
            "gateway.gateway.networking.k8s.io",
            testkit::k8s::TEST_GATEWAY
        )
        .await["spec"]["listeners"][1]["port"]
    );
    let url = format!("{llm}/v1/completions");
    let (code, _) = post(
        &client(),
        &url,
        &[],
        r#"{"model":"friendly-name","prompt":"x"}"#,
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = post(&client(), &url, &[], r#"{"prompt":"no model"}"#).await;
    assert_eq!(code, 200);
    let models: Vec<Option<String>> = backend.seen().into_iter().map(|s| s.model).collect();
    assert_eq!(
        models,
        [
            Some("/model/qwen".to_owned()),
            Some("fallback-model".to_owned())
        ]
    );
    let (code, body) = testkit::get(&format!("{llm}/v1/models")).await;
    assert_eq!(code, 200);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "friendly-name"),
        "{list:#}"
    );
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

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A holder stopped with SIGTERM releases the Lease (clears its holder) on the way out, so a
/// successor need not wait for it to expire.
#[tokio::test]
async fn a_holder_stopping_gracefully_releases_the_lease() {
    let _turn = SERIAL.lock().await;
    let (cluster, token, _backend) = one_pod(115).await;
    let gateway = KubeGateway::start(&cluster, &token, "replica-a", true).await;
    wait_until("the only replica holds the Lease", DEADLINE, || async {
        lease_holder(&cluster).await.as_deref() == Some("replica-a")
    })
    .await;
    let pid = gateway.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the Lease is released on SIGTERM", DEADLINE, || async {
        let lease = cluster
            .get("lease", NAMESPACE, "inference-gateway-status")
            .await
            .expect("the Lease stays, released");
        lease["spec"]["holderIdentity"].is_null()
    })
    .await;
}

/// `--validate --source kube` lists every kind once as the ServiceAccount, writes nothing (no
/// status, no Lease), reports every problem and fails. (The reflectors it shares with serving
/// may open their watches before it exits; those read nothing it reports.)
#[tokio::test]
async fn validate_lists_once_and_reports_every_problem() {
    let _turn = SERIAL.lock().await;
    let (cluster, token) = cluster().await;
    cluster
        .apply(&Manifest::qwen_pool(free_port(), free_port(), 8000).render())
        .await;
    cluster
        .apply(
            "apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: broken, namespace: default, annotations: {inference.networking.x-k8s.io/routing-strategy: FASTEST}}
spec: {selector: {app: qwen}, targetPortNumber: 8000, extensionRef: {name: picker}}
",
        )
        .await;
    let dir = std::env::temp_dir().join(format!("igw-kube-validate-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .args(["--source", "kube", "--validate", "--kubeconfig"])
        .arg(cluster.token_kubeconfig(&dir, &token, NAMESPACE))
        .env("RUST_LOG", "error")
        .env_remove("KUBECONFIG")
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("error: InferencePool default/broken")
            && stdout.contains("unknown routing strategy"),
        "{stdout}"
    );

    let requests = gateway_requests(&cluster);
    let mut lists = std::collections::BTreeMap::<String, usize>::new();
    for event in &requests {
        let verb = event["verb"].as_str().unwrap_or("");
        assert!(
            verb == "list" || verb == "watch",
            "--validate only reads: {event:#}"
        );
        if verb == "watch" {
            continue;
        }
        let object = &event["objectRef"];
        let resource = format!(
            "{}/{}",
            object["apiGroup"].as_str().unwrap_or(""),
            object["resource"].as_str().unwrap_or("")
        );
        // The kinds whose CRD is optional are probed first with a one-item list.
        if event["requestURI"]
            .as_str()
            .is_some_and(|uri| uri.contains("limit=1"))
        {
            assert!(
                resource.contains("inferenceobjectives")
                    || resource.contains("inferencemodelrewrites")
                    || resource.contains("backendtrafficpolicies"),
                "only optional kinds are probed: {resource}"
            );
            continue;
        }
        *lists.entry(resource).or_default() += 1;
    }
    assert!(lists.len() >= 9, "every kind is listed: {lists:?}");
    assert!(
        lists.values().all(|n| *n == 1),
        "each kind is listed once: {lists:?}"
    );
}

/// A Gateway, a v1 pool on `port` selecting `app: qwen`, a route and one Ready pod at `ip`, all in
/// `namespace`.
fn team(namespace: &str, listener_port: u16, port: u16, ip: IpAddr) -> String {
    Manifest::new()
        .with(
            k8s::Gateway::new(testkit::k8s::TEST_GATEWAY, TEST_CLASS)
                .namespace(namespace)
                .listener("llm", listener_port),
        )
        .with(
            HttpRoute::new("llm-route")
                .namespace(namespace)
                .on(testkit::k8s::TEST_GATEWAY, "llm")
                .to(BackendRef::pool_v1("pool")),
        )
        .with(
            InferencePool::v1("pool", port)
                .namespace(namespace)
                .selector("app", "qwen"),
        )
        .with(Pod::qwen("qwen-0", ip, true).namespace(namespace))
        .render()
}

/// Gateways and pools in two namespaces are each served by their own pods; with
/// `--kube-namespace` the gateway reads one namespace only (its namespaced requests stay in it),
/// and with `--kube-write-status false` it takes no part in the Lease election.
#[tokio::test]
async fn several_gateways_and_pools_in_namespaces_and_one_namespace_only_when_asked() {
    let _turn = SERIAL.lock().await;
    let (cluster, token) = cluster().await;
    let (port, backends) = start_backends(120, 2).await;
    for namespace in ["team-a", "team-b"] {
        cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"
            ))
            .await;
    }
    cluster
        .apply(&GatewayClass::new(TEST_CLASS).to_yaml())
        .await;
    let (a_port, b_port) = (free_port(), free_port());
    cluster
        .apply(&team("team-a", a_port, port, backends[0].addr.ip()))
        .await;
    cluster
        .apply(&team("team-b", b_port, port, backends[1].addr.ip()))
        .await;

    let both = KubeGateway::start(&cluster, &token, "all-namespaces", true).await;
    let pools = |s: &Value| -> Vec<String> {
        let mut pools: Vec<String> = s["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pool"].as_str().unwrap().to_owned())
            .collect();
        pools.sort();
        pools
    };
    both.wait_snapshot("both teams' pools serve", DEADLINE, |s| {
        pools(s) == ["team-a/pool", "team-b/pool"]
    })
    .await;
    for (listener_port, backend) in [(a_port, &backends[0]), (b_port, &backends[1])] {
        let (status, body) = post(
            &client(),
            &format!("http://127.0.0.1:{listener_port}/v1/completions"),
            &[],
            r#"{"model":"m"}"#,
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["server"],
            backend.addr.to_string(),
            "each team's pods serve its Gateway"
        );
    }
    drop(both);

    let only_a = KubeGateway::start_with(
        &cluster,
        &token,
        "team-a-only",
        true,
        &["--kube-namespace", "team-a", "--kube-write-status", "false"],
    )
    .await;
    only_a
        .wait_snapshot("team-a's pool serves", DEADLINE, |s| {
            pools(s) == ["team-a/pool"]
        })
        .await;
    let mine: Vec<Value> = gateway_requests(&cluster)
        .into_iter()
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .unwrap_or("")
                .contains("team-a-only")
        })
        .collect();
    assert!(
        !mine.is_empty(),
        "the audit log shows the gateway's requests"
    );
    let outside: Vec<&Value> = mine
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "pods")
        .filter(|e| e["objectRef"]["namespace"] != "team-a")
        .collect();
    assert!(
        outside.is_empty(),
        "pods are read from team-a only: {outside:#?}"
    );
    let leases: Vec<&Value> = mine
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "leases")
        .collect();
    assert!(
        leases.is_empty(),
        "--kube-write-status false takes no part in the election: {leases:#?}"
    );
}
