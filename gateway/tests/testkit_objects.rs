//! The testkit's object builders against the gateway's own parser and snapshot build: what they
//! render loads without an issue, and the snapshot has the values the builders were given (so an
//! integration test configured with them configures what it says).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use gateway::config::objects::ObjectSet;
use gateway::config::{Kind, ObjectKey, Severity};
use gateway::snapshot::routes::PathMatch;
use gateway::snapshot::{Backend, BuildOptions, Snapshot};
use testkit::k8s::{
    self, BackendRef, BackendTrafficPolicy, Gateway, GatewayClass, HttpRoute, InferenceModel,
    InferencePool, Manifest, Pod, Rule, TEST_CLASS,
};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// Parse `yaml` as one configuration file and build a snapshot; fails on any parse issue, ignored
/// document or build error.
fn build(yaml: &str) -> Snapshot {
    let mut objects = ObjectSet::default();
    let issues = objects.add_yaml(yaml, Path::new("built.yaml"));
    assert!(issues.is_empty(), "{issues:#?}\n{yaml}");
    assert!(objects.ignored.is_empty(), "{:?}", objects.ignored);
    let registry = plugins::Registry::with_builtins();
    let options = BuildOptions {
        controller_name: k8s::CONTROLLER_NAME,
        registry: &registry,
        default_request_timeout: None,
        picker: &epp::ClientSettings::default(),
        listeners_required: true,
    };
    let (snapshot, issues) = gateway::snapshot::build(&objects, &options, None);
    let errors: Vec<_> = issues
        .iter()
        .filter(|i| i.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{yaml}");
    snapshot
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, namespace, name)
}

/// Endpoint addresses of a pool.
fn pool_endpoints(snapshot: &Snapshot, pool: &ObjectKey) -> Vec<String> {
    snapshot.pools[pool]
        .endpoints
        .iter()
        .map(|e| e.id.address().to_string())
        .collect()
}

#[test]
fn the_usual_test_configuration_builds_with_every_value_in_place() {
    let pods = k8s::ready_pods("sim", "sim", [ip(1), ip(2)]);
    let manifest = Manifest::test_gateway(18080, 18081)
        .with_pool(
            InferencePool::new("pool", 8000)
                .selector("app", "sim")
                .strategy("PREFIX_CACHE"),
            pods,
        )
        .with(Pod::new("down", ip(3)).label("app", "sim").ready(false))
        .with_plain_service("sims", "sim", 8000)
        .with_all(k8s::seed_models("pool", (70, 30)))
        .with(
            InferenceModel::new("batch", "batch", "pool")
                .criticality("Sheddable")
                .target("/model/qwen"),
        );
    let snapshot = build(&manifest.render());

    assert_eq!(
        snapshot.ports.keys().copied().collect::<Vec<_>>(),
        vec![18080, 18081]
    );
    let pool = &snapshot.pools[&key(Kind::InferencePool, "default", "pool")];
    assert_eq!(pool.strategy_name, "PREFIX_CACHE");
    assert_eq!(
        pool_endpoints(&snapshot, &pool.key),
        vec!["10.0.0.1:8000", "10.0.0.2:8000"],
        "the pod that is not Ready is left out"
    );
    let model = |name: &str| serde_json::to_value(&*pool.models[name]).unwrap();
    assert_eq!(model("/model/qwen")["criticality"], "Critical");
    assert_eq!(model("/model/qwen")["targets"], serde_json::json!([]));
    assert_eq!(
        model("travel-helper")["targets"],
        serde_json::json!([
            {"name": "travel-helper-v1", "weight": 70},
            {"name": "travel-helper-v2", "weight": 30},
        ])
    );
    assert_eq!(model("travel-helper")["criticality"], "Standard");
    assert_eq!(model("batch")["criticality"], "Sheddable");
    assert_eq!(
        model("batch")["targets"],
        serde_json::json!([{"name": "/model/qwen", "weight": 1}])
    );

    let plain = &snapshot.ports[&18080].listeners[0].entries[0];
    assert_eq!(plain.route, key(Kind::HttpRoute, "default", "plain"));
    match &plain.action.backends[0].backend {
        Backend::Service(service) => {
            assert_eq!(service.key, key(Kind::Service, "default", "sims"));
            assert_eq!(service.port, 80);
            assert_eq!(service.endpoints.len(), 2);
        }
        other => panic!("the plain route goes to the Service, not {other:?}"),
    }
    let llm = &snapshot.ports[&18081].listeners[0].entries[0];
    assert_eq!(llm.route, key(Kind::HttpRoute, "default", "llm-route"));
    assert!(matches!(&llm.action.backends[0].backend, Backend::Pool(p) if p.key == pool.key));
}

#[test]
fn matches_timeouts_policies_v1_pools_and_namespaces_build() {
    let manifest = Manifest::new()
        .with(GatewayClass::new(TEST_CLASS))
        .with(
            Gateway::new("gw", TEST_CLASS)
                .namespace("team-a")
                .listener("llm", 18082),
        )
        .with(
            HttpRoute::new("llm-route")
                .namespace("team-a")
                .on("gw", "llm")
                .rule(
                    Rule::to(BackendRef::pool_v1("pool"))
                        .exact_path("/fast")
                        .request_timeout("300ms"),
                )
                .rule(Rule::to(BackendRef::pool_v1("pool")).path_prefix("/v1")),
        )
        .with(
            InferencePool::v1("pool", 9000)
                .namespace("team-a")
                .selector("app", "qwen"),
        )
        .with(
            Pod::new("qwen-0", ip(4))
                .namespace("team-a")
                .label("app", "qwen")
                .running()
                .container("vllm", "vllm-sim", 9000),
        );
    let yaml = manifest
        .with(BackendTrafficPolicy::new("timeout", "gw", "1h").namespace("team-a"))
        .render();
    let snapshot = build(&yaml);

    let pool = key(Kind::InferencePool, "team-a", "pool");
    assert_eq!(
        snapshot.pools[&pool].api_version,
        "inference.networking.k8s.io/v1"
    );
    assert_eq!(pool_endpoints(&snapshot, &pool), vec!["10.0.0.4:9000"]);
    let entries = &snapshot.ports[&18082].listeners[0].entries;
    let timeout_of = |path: PathMatch| {
        let entry = entries
            .iter()
            .find(|e| format!("{:?}", e.matcher.path) == format!("{path:?}"))
            .unwrap_or_else(|| panic!("no entry for {path:?}: {entries:#?}"));
        entry.action.timeout
    };
    assert_eq!(
        timeout_of(PathMatch::Exact("/fast".into())),
        Some(Duration::from_millis(300))
    );
    assert_eq!(
        timeout_of(PathMatch::prefix("/v1")),
        Some(Duration::from_secs(3600)),
        "the policy's timeout where the rule sets none"
    );
}
