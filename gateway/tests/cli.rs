//! The binary's command line: `--validate` on good and bad configurations.

use std::process::Command;

fn validate(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .arg("--validate")
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn manifest_dir(relative: &str) -> String {
    format!("{}/../{relative}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_embedded_and_local_examples_validate() {
    let (ok, text) = validate(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("ok: embedded local example"), "{text}");
    assert!(text.contains("strategy DEFAULT)"), "{text}");
    let (ok, text) = validate(&["--config", &manifest_dir("manifests/examples/local")]);
    assert!(ok, "{text}");
    assert!(
        text.contains("note: Deployment qwen"),
        "the seed's Deployment is reported as ignored: {text}"
    );
    // The current API: a v1 pool with InferenceObjectives and InferenceModelRewrites.
    let (ok, text) = validate(&["--config", &manifest_dir("manifests/examples/current")]);
    assert!(ok, "{text}");
    assert!(
        text.contains("default/vllm-qwen-pool (5 endpoints, 0 models, 2 model rewrites, 2 objectives, strategy PREFIX_CACHE)"),
        "{text}"
    );
}

#[test]
fn errors_name_object_field_value_and_reason_and_fail_the_run() {
    let dir = std::env::temp_dir().join(format!("igw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(manifest_dir("manifests/examples/local")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let pool = std::fs::read_to_string(dir.join("inference-pool.yaml")).unwrap();
    let broken = pool
        .replace("  name: vllm-qwen-pool\n", "  name: vllm-qwen-pool\n  annotations:\n    inference.networking.x-k8s.io/routing-strategy: FASTEST\n")
        .replace("weight: 100", "weight: 0");
    std::fs::write(dir.join("inference-pool.yaml"), broken).unwrap();
    let (ok, text) = validate(&["--config", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("error: InferencePool default/vllm-qwen-pool (")
            && text.contains("metadata.annotations[inference.networking.x-k8s.io/routing-strategy] = \"FASTEST\": unknown routing strategy"),
        "{text}"
    );
    assert!(
        text.contains("error: InferenceModel default/inferencemodel-qwen (")
            && text.contains("spec.targetModels[0].weight = \"0\": must be between 1 and 1000000"),
        "{text}"
    );
    assert!(text.contains("2 error(s)"), "{text}");
}

#[test]
fn an_endpoint_picker_alone_needs_no_gateway_but_a_proxy_does() {
    let dir = std::env::temp_dir().join(format!("igw-cli-epp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = std::fs::read_to_string(manifest_dir(
        "manifests/examples/current/inference-pool.yaml",
    ))
    .unwrap();
    std::fs::write(dir.join("pool.yaml"), pool).unwrap();
    let config = dir.to_str().unwrap();
    let (proxy_ok, proxy_text) = validate(&["--config", config]);
    let (picker_ok, picker_text) =
        validate(&["--config", config, "--epp-pool", "default/vllm-qwen-pool"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!proxy_ok, "{proxy_text}");
    assert!(proxy_text.contains("error: configuration"), "{proxy_text}");
    assert!(picker_ok, "{picker_text}");
    assert!(
        picker_text.contains("warning: configuration")
            && picker_text.contains("no GatewayClass names this controller"),
        "{picker_text}"
    );
}
