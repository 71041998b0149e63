//! The manifests the kube source ships with: the committed CRDs match the types, the seed's and the
//! Inference Extension's example objects deserialize into the gateway's types without losing a
//! field, the seed builds with only its controllerName changed, and the Deployment's flags and
//! grace period agree with the binary. (Schema validation of every manifest is `.ci/run`'s
//! `scripts/validate-manifests.py`.)

use std::path::{Path, PathBuf};

use clap::Parser;
use gateway::config::crds::apix::{llmd, xk8s};
use gateway::config::objects::ObjectSet;
use gateway::config::{Object, Severity};
use gateway::kubernetes::crds::{EnvoyBackendTrafficPolicy, crd_files};
use serde_json::Value;

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn yaml_documents(dir: &str) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            if !value.is_null() {
                out.push((file.clone(), value));
            }
        }
    }
    out
}

/// Every leaf of `original` is in `roundtrip` with the same value.
fn assert_subset(original: &Value, roundtrip: &Value, path: &str) {
    match (original, roundtrip) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let other = b
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} was dropped by deserialization"));
                assert_subset(value, other, &format!("{path}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: list length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_subset(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{path}");
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

/// Parse with the gateway's own object parser, serialize the typed object back, and compare.
fn roundtrip(file: &Path, original: &Value) {
    let kind = original["kind"].as_str().unwrap();
    let typed = match (original["apiVersion"].as_str().unwrap(), kind) {
        ("apps/v1", "Deployment") => serde_json::to_value(
            serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(original.clone())
                .unwrap(),
        )
        .unwrap(),
        ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy") => serde_json::to_value(
            serde_json::from_value::<EnvoyBackendTrafficPolicy>(original.clone()).unwrap(),
        )
        .unwrap(),
        ("llm-d.ai/v1alpha2", "InferenceObjective") => serde_json::to_value(
            serde_json::from_value::<llmd::InferenceObjective>(original.clone()).unwrap(),
        )
        .unwrap(),
        ("llm-d.ai/v1alpha2", "InferenceModelRewrite") => serde_json::to_value(
            serde_json::from_value::<llmd::InferenceModelRewrite>(original.clone()).unwrap(),
        )
        .unwrap(),
        ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective") => serde_json::to_value(
            serde_json::from_value::<xk8s::InferenceObjective>(original.clone()).unwrap(),
        )
        .unwrap(),
        ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite") => {
            serde_json::to_value(
                serde_json::from_value::<xk8s::InferenceModelRewrite>(original.clone()).unwrap(),
            )
            .unwrap()
        }
        _ => {
            let mut set = ObjectSet::default();
            let issues = set.add_yaml(&serde_yaml::to_string(original).unwrap(), file);
            assert!(issues.is_empty(), "{}: {issues:?}", file.display());
            assert!(
                set.ignored.is_empty(),
                "{}: {kind} is not read",
                file.display()
            );
            let object = &set.documents[0].object;
            match object {
                Object::GatewayClass(o) => serde_json::to_value(o),
                Object::Gateway(o) => serde_json::to_value(o),
                Object::HttpRoute(o) => serde_json::to_value(o),
                Object::Service(o) => serde_json::to_value(o),
                Object::Pod(o) => serde_json::to_value(o),
                Object::Namespace(o) => serde_json::to_value(o),
                Object::PoolV1Alpha2(o) => serde_json::to_value(o),
                Object::PoolV1(o) => serde_json::to_value(o),
                Object::InferenceModel(o) => serde_json::to_value(o),
                Object::BackendTrafficPolicy(_) | Object::Objective(_) | Object::Rewrite(_) => {
                    unreachable!("handled above")
                }
            }
            .unwrap()
        }
    };
    assert_subset(
        original,
        &typed,
        &format!("{} {kind}", file.file_name().unwrap().to_string_lossy()),
    );
}

#[test]
fn the_committed_crds_are_the_generated_ones() {
    for file in crd_files() {
        let path = repo("manifests/crds").join(file.path);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == file.render(),
            "{} is stale: run `cargo run -p inference-gateway --bin crdgen`",
            path.display()
        );
    }
}

#[test]
fn seed_and_upstream_examples_deserialize_unchanged() {
    let mut count = 0;
    for dir in [
        "manifests/examples/seed",
        "manifests/examples/upstream",
        "manifests/examples/local",
        "manifests/examples/current",
    ] {
        for (file, document) in yaml_documents(dir) {
            roundtrip(&file, &document);
            count += 1;
        }
    }
    assert!(count >= 25, "{count} documents");
}

#[test]
fn the_seed_differs_from_the_original_only_in_the_controller_name_and_builds() {
    let gateway =
        std::fs::read_to_string(repo("manifests/examples/seed/inference-gateway.yaml")).unwrap();
    assert!(gateway.contains("controllerName: inference-gateway.dev/controller"));
    let local =
        std::fs::read_to_string(repo("manifests/examples/local/inference-gateway.yaml")).unwrap();
    let body = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        body(&gateway),
        body(&local),
        "the seed and the local example agree"
    );

    let loaded = gateway::config::load::load(&[repo("manifests/examples/seed")]);
    assert!(loaded.issues.is_empty(), "{:?}", loaded.issues);
    let registry = plugins::Registry::with_builtins();
    let options = gateway::snapshot::BuildOptions {
        controller_name: gateway::cli::DEFAULT_CONTROLLER_NAME,
        registry: &registry,
        default_request_timeout: None,
        picker: &epp::ClientSettings::default(),
        listeners_required: true,
    };
    let (snapshot, issues) = gateway::snapshot::build(&loaded.objects, &options, None);
    let errors: Vec<_> = issues
        .iter()
        .filter(|i| i.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        snapshot.ports.keys().copied().collect::<Vec<_>>(),
        vec![8080, 8081]
    );
    let route = &snapshot.ports[&8081].listeners[0].entries[0];
    assert_eq!(
        route.action.timeout,
        Some(std::time::Duration::from_secs(3600)),
        "the seed's BackendTrafficPolicy sets the timeout"
    );
}

#[test]
fn the_deployment_agrees_with_the_binary_and_the_service_with_the_seed() {
    let docs = yaml_documents("manifests/deploy");
    let find = |kind: &str, name: &str| {
        docs.iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let deployment = find("Deployment", "inference-gateway");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &spec["containers"][0];
    let mut argv = vec!["inference-gateway".to_owned()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    let args = gateway::Args::try_parse_from(&argv).expect("the Deployment's flags parse");
    // Drain delay, then the grace period, then Pingora's runtime shutdown timeout (server.rs).
    let drain = args.drain_delay.as_secs() + args.grace_period.as_secs() + 5;
    assert_eq!(
        spec["terminationGracePeriodSeconds"].as_u64().unwrap(),
        drain
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(args.admin_addr.port(), 9090);

    let config = find("ConfigMap", "inference-gateway");
    assert_eq!(config["data"]["GATEWAY_SOURCE"], "kube");
    assert_eq!(
        config["data"]["GATEWAY_CONTROLLER_NAME"],
        gateway::cli::DEFAULT_CONTROLLER_NAME
    );
    let service = find("Service", "inference-gateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        config["data"]["GATEWAY_SERVICE"],
        format!(
            "{}/{}",
            service["metadata"]["namespace"].as_str().unwrap(),
            service["metadata"]["name"].as_str().unwrap()
        )
    );
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![8080, 8081], "the seed's listener ports");

    // Status is the only thing written, with patch only; everything else is listed and watched
    // (kube_cluster.rs shows each verb is needed).
    let role = find("ClusterRole", "inference-gateway");
    for rule in role["rules"].as_array().unwrap() {
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if resources.iter().all(|r| r.ends_with("/status")) {
            assert_eq!(verbs, vec!["patch"]);
        } else {
            assert_eq!(verbs, vec!["list", "watch"], "{resources:?}");
        }
    }
}
