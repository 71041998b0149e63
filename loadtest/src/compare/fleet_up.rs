//! Bringing up the local stack for one run: five fresh `vllm-sim` processes on 127.0.0.2–6:8000
//! (the Pods of `manifests/examples/local/`), each with its own hardware profile or all with one,
//! and a fresh `inference-gateway` on a scratch copy of that configuration with the
//! InferencePool's routing strategy set, each waited on until ready.
//!
//! Fresh processes per run mean no KV cache, prefix index or adapter residency carries over from
//! one route to the next. The ports are checked first: a leftover process answering on them would
//! silently serve instead.
//!
//! With several gateway replicas ([`StackPlan::replicas`]) each replica is its own process on the
//! same configuration, listening on its own loopback address ([`gateway_host`]: 127.0.1.1,
//! 127.0.1.2, …, the ports of the example) with its own admin port (9090, 9091, …), as the
//! replicas of a Deployment are pods with their own addresses. A route with KV events starts the
//! simulators publishing (`--kv-events-config`, vLLM's `tcp://*:5557` and replay `tcp://*:5558`,
//! each simulated pod binding its own address) and annotates the pool to subscribe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::client::StreamClient;
use crate::procs::{ProcessError, Processes, ensure_free, seed_sim_command};

/// The Pods' addresses in `manifests/examples/local/pods.yaml`.
pub const POD_HOSTS: [&str; 5] = [
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
];
/// The Pods' model-server port.
pub const POD_PORT: u16 = 8000;
/// The Gateway listeners of the example: plain route and inference route.
pub const PLAIN_PORT: u16 = 8080;
pub const INFERENCE_PORT: u16 = 8081;
/// The gateway's admin listener (its default).
pub const ADMIN_ADDR: &str = "127.0.0.1:9090";
/// The annotation that picks the pool's strategy.
pub const STRATEGY_ANNOTATION: &str = "inference.networking.x-k8s.io/routing-strategy";
/// The example's pool.
pub const POOL_NAME: &str = "vllm-qwen-pool";
/// The pool annotation that turns the gateway's queue off (`gateway/src/flow/settings.rs`).
pub const FLOW_CONTROL_ENABLED_ANNOTATION: &str = "flow-control.inference-gateway.dev/enabled";
/// The pool annotations that subscribe the gateway to the pods' KV events
/// (`gateway/src/kv_events/settings.rs`).
pub const KV_EVENTS_ENABLED_ANNOTATION: &str = "kv-events.inference-gateway.dev/enabled";
pub const KV_EVENTS_REPLAY_ANNOTATION: &str = "kv-events.inference-gateway.dev/replay-port";
/// vLLM's documented KV-event ports: the PUB socket and the replay socket.
pub const KV_EVENTS_PORT: u16 = 5557;
pub const KV_EVENTS_REPLAY_PORT: u16 = 5558;

/// The address replica `replica` (from 0) of the gateway listens on: 127.0.0.1 for a single
/// gateway, else 127.0.1.(replica + 1).
pub fn gateway_host(replica: usize, replicas: usize) -> String {
    if replicas <= 1 {
        "127.0.0.1".into()
    } else {
        format!("127.0.1.{}", replica + 1)
    }
}

/// Replica `replica`'s admin listener: 127.0.0.1:9090 + replica.
pub fn admin_addr(replica: usize) -> SocketAddr {
    let base: SocketAddr = ADMIN_ADDR.parse().expect("literal address");
    SocketAddr::new(base.ip(), base.port() + replica as u16)
}

/// The simulators' `--kv-events-config`: vLLM's defaults with a replay socket.
pub fn kv_events_config() -> String {
    format!(
        "{{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\", \"endpoint\": \"tcp://*:{KV_EVENTS_PORT}\", \"replay_endpoint\": \"tcp://*:{KV_EVENTS_REPLAY_PORT}\"}}"
    )
}

/// How long a process may take to become ready. Simulators bind in milliseconds and the gateway
/// is ready after its first scrape round (50 ms); these bound a broken start, not a normal one.
const SIM_READY: Duration = Duration::from_secs(30);
const GATEWAY_READY: Duration = Duration::from_secs(60);

/// Why the stack could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} has no InferencePool named {POOL_NAME} to annotate")]
    NoPool(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StackError + '_ {
    move |source| StackError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the stack needs.
#[derive(Debug, Clone)]
pub struct StackPlan {
    pub sim_binary: PathBuf,
    pub gateway_binary: PathBuf,
    /// `manifests/examples/local/`.
    pub manifests: PathBuf,
    /// The simulators' `--profile`, one per entry of [`POD_HOSTS`] in order; a single entry
    /// applies to all of them.
    pub profiles: Vec<String>,
    pub time_scale: f64,
    pub seed: u64,
    /// Adapters the simulators register (empty: the seed's two).
    pub lora_modules: Vec<String>,
    /// Extra model names the gateway must serve (InferenceModels on the pool).
    pub gateway_models: Vec<String>,
    /// The pool's strategy; `None` leaves the example's annotation-less pool (DEFAULT).
    pub strategy: Option<String>,
    /// Whether the pool queues requests while saturated (the gateway's default); `false`
    /// annotates it off.
    pub flow_control: bool,
    /// InferenceObjectives on the pool, for requests that name one.
    pub objectives: Vec<ObjectiveSpec>,
    /// Where configs and logs go.
    pub scratch: PathBuf,
    /// The gateway's `RUST_LOG`.
    pub gateway_log: String,
    /// Whether the simulators publish KV events and the pool subscribes to them.
    pub kv_events: bool,
    /// Gateway processes over the same pool (at least 1).
    pub replicas: usize,
}

impl StackPlan {
    /// The profile of the simulator at `index` in [`POD_HOSTS`].
    pub fn profile_for(&self, index: usize) -> &str {
        profile_for(&self.profiles, index)
    }
}

/// The profile of simulator `index` given one profile per simulator or one for all.
pub fn profile_for(profiles: &[String], index: usize) -> &str {
    match profiles {
        [one] => one,
        many => many.get(index).map_or("", String::as_str),
    }
}

/// An InferenceObjective the stack declares on its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectiveSpec {
    pub name: String,
    pub priority: i32,
    /// Its own time to live in the gateway's queue, when not the pool's.
    pub ttl_ms: Option<u64>,
}

/// The InferenceObjectives of `objectives` on the example's pool (a v1alpha2 pool, so the
/// reference names its group).
pub fn objectives_yaml(objectives: &[ObjectiveSpec]) -> String {
    objectives
        .iter()
        .map(|o| {
            let annotations = o.ttl_ms.map_or_else(String::new, |ttl| {
                format!("  annotations:\n    flow-control.inference-gateway.dev/ttl-ms: \"{ttl}\"\n")
            });
            format!(
                "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\nmetadata:\n  name: {}\n{annotations}spec:\n  priority: {}\n  poolRef:\n    group: inference.networking.x-k8s.io\n    name: {POOL_NAME}\n",
                o.name, o.priority
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Inserts `annotations` (name, value) into the InferencePool named [`POOL_NAME`].
pub fn annotate_pool(yaml: &str, annotations: &[(&str, &str)]) -> Option<String> {
    let mut out = String::with_capacity(yaml.len() + 100);
    let mut in_pool = false;
    let mut done = false;
    for line in yaml.lines() {
        if line.starts_with("kind:") {
            in_pool = line.trim_end() == "kind: InferencePool";
        }
        out.push_str(line);
        out.push('\n');
        if in_pool && !done && line.trim_end() == format!("  name: {POOL_NAME}") {
            out.push_str("  annotations:\n");
            for (name, value) in annotations {
                out.push_str(&format!("    {name}: \"{value}\"\n"));
            }
            done = true;
        }
    }
    done.then_some(out)
}

/// The InferenceModels that let the inference route accept `names` (sent as requested).
pub fn inference_models_yaml(names: &[String]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata:\n  name: {name}\nspec:\n  modelName: {name}\n  criticality: Critical\n  poolRef:\n    name: {POOL_NAME}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes the gateway's configuration for `plan` into `dir`.
pub fn write_config(plan: &StackPlan, dir: &Path) -> Result<(), StackError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let entries = std::fs::read_dir(&plan.manifests).map_err(io_error(&plan.manifests))?;
    let mut annotations = Vec::new();
    if let Some(strategy) = &plan.strategy {
        annotations.push((STRATEGY_ANNOTATION, strategy.as_str()));
    }
    if !plan.flow_control {
        annotations.push((FLOW_CONTROL_ENABLED_ANNOTATION, "false"));
    }
    let replay_port = KV_EVENTS_REPLAY_PORT.to_string();
    if plan.kv_events {
        annotations.push((KV_EVENTS_ENABLED_ANNOTATION, "true"));
        annotations.push((KV_EVENTS_REPLAY_ANNOTATION, replay_port.as_str()));
    }
    let mut annotated = annotations.is_empty();
    for entry in entries {
        let path = entry.map_err(io_error(&plan.manifests))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        if !annotations.is_empty()
            && let Some(with) = annotate_pool(&text, &annotations)
        {
            text = with;
            annotated = true;
        }
        let target = dir.join(path.file_name().unwrap_or_default());
        std::fs::write(&target, text).map_err(io_error(&target))?;
    }
    if !annotated {
        return Err(StackError::NoPool(plan.manifests.display().to_string()));
    }
    if !plan.gateway_models.is_empty() {
        let target = dir.join("extra-models.yaml");
        std::fs::write(&target, inference_models_yaml(&plan.gateway_models))
            .map_err(io_error(&target))?;
    }
    if !plan.objectives.is_empty() {
        let target = dir.join("objectives.yaml");
        std::fs::write(&target, objectives_yaml(&plan.objectives)).map_err(io_error(&target))?;
    }
    Ok(())
}

/// A running stack; dropping it stops every process.
pub struct Stack {
    pub processes: Processes,
    pub sim_pids: Vec<u32>,
    /// One per gateway replica.
    pub gateway_pids: Vec<u32>,
    /// The address each gateway replica listens on ([`gateway_host`]).
    pub gateway_hosts: Vec<String>,
    pub endpoints: Vec<String>,
}

/// Starts the simulators, then the gateway, each waited on until ready.
pub async fn start_stack(plan: &StackPlan) -> Result<Stack, StackError> {
    let mut ports: Vec<SocketAddr> = POD_HOSTS
        .iter()
        .map(|host| SocketAddr::new(host.parse().expect("literal address"), POD_PORT))
        .collect();
    let replicas = plan.replicas.max(1);
    for replica in 0..replicas {
        let host: std::net::IpAddr = gateway_host(replica, replicas)
            .parse()
            .expect("literal address");
        ports.push(SocketAddr::new(host, PLAIN_PORT));
        ports.push(SocketAddr::new(host, INFERENCE_PORT));
        ports.push(admin_addr(replica));
    }
    if plan.kv_events {
        for host in POD_HOSTS {
            let host: std::net::IpAddr = host.parse().expect("literal address");
            ports.push(SocketAddr::new(host, KV_EVENTS_PORT));
            ports.push(SocketAddr::new(host, KV_EVENTS_REPLAY_PORT));
        }
    }
    for address in ports {
        ensure_free(address)?;
    }
    let config_dir = plan.scratch.join("config");
    write_config(plan, &config_dir)?;

    let client = StreamClient::new(4);
    let mut processes = Processes::new();
    let mut sim_pids = Vec::new();
    let mut endpoints = Vec::new();
    for (index, host) in POD_HOSTS.iter().enumerate() {
        let mut command = seed_sim_command(
            &plan.sim_binary,
            host,
            POD_PORT,
            plan.profile_for(index),
            plan.time_scale,
            plan.seed + index as u64,
            &plan.lora_modules,
        );
        if plan.kv_events {
            command.args(["--kv-events-config", &kv_events_config()]);
        }
        let log = plan.scratch.join(format!("sim-{index}.log"));
        sim_pids.push(processes.spawn(&format!("vllm-sim {host}"), command, &log)?);
        endpoints.push(format!("http://{host}:{POD_PORT}"));
    }
    for (host, endpoint) in POD_HOSTS.iter().zip(&endpoints) {
        processes
            .wait_ready(
                &client,
                &format!("vllm-sim {host}"),
                &format!("{endpoint}/health"),
                SIM_READY,
            )
            .await?;
    }
    let mut gateway_pids = Vec::new();
    let mut gateway_hosts = Vec::new();
    for replica in 0..replicas {
        let host = gateway_host(replica, replicas);
        let admin = admin_addr(replica).to_string();
        let mut gateway = Command::new(&plan.gateway_binary);
        gateway
            .arg("--config")
            .arg(&config_dir)
            .args(["--admin-addr", &admin, "--listen-host", &host])
            .env("RUST_LOG", &plan.gateway_log);
        let name = if replicas == 1 {
            "inference-gateway".to_owned()
        } else {
            format!("inference-gateway {host}")
        };
        let log = if replicas == 1 {
            plan.scratch.join("gateway.log")
        } else {
            plan.scratch.join(format!("gateway-{replica}.log"))
        };
        gateway_pids.push(processes.spawn(&name, gateway, &log)?);
        processes
            .wait_ready(
                &client,
                &name,
                &format!("http://{admin}/readyz"),
                GATEWAY_READY,
            )
            .await?;
        gateway_hosts.push(host);
    }
    Ok(Stack {
        processes,
        sim_pids,
        gateway_pids,
        gateway_hosts,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "# comment\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata:\n  name: vllm-qwen-pool\nspec:\n  targetPortNumber: 8000\n---\nkind: InferenceModel\nmetadata:\n  name: vllm-qwen-pool\n";

    #[test]
    fn the_pool_and_only_the_pool_is_annotated() {
        let out = annotate_pool(
            POOL,
            &[
                (STRATEGY_ANNOTATION, "PREFIX_CACHE"),
                (FLOW_CONTROL_ENABLED_ANNOTATION, "false"),
            ],
        )
        .unwrap();
        assert_eq!(out.matches("routing-strategy").count(), 1);
        assert!(out.contains(
            "  name: vllm-qwen-pool\n  annotations:\n    inference.networking.x-k8s.io/routing-strategy: \"PREFIX_CACHE\"\n    flow-control.inference-gateway.dev/enabled: \"false\"\nspec:"
        ));
        let service = "kind: Service\nmetadata:\n  name: x\n";
        assert!(annotate_pool(service, &[(STRATEGY_ANNOTATION, "DEFAULT")]).is_none());
    }

    #[test]
    fn the_example_config_is_copied_with_the_strategy_and_extra_models() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/local");
        let plan = StackPlan {
            sim_binary: PathBuf::new(),
            gateway_binary: PathBuf::new(),
            manifests,
            profiles: vec![String::new()],
            time_scale: 1.0,
            seed: 0,
            lora_modules: Vec::new(),
            gateway_models: vec!["adapter-1".into()],
            strategy: Some("LORA_AFFINITY".into()),
            flow_control: false,
            objectives: vec![ObjectiveSpec {
                name: "batch".into(),
                priority: -1,
                ttl_ms: Some(600_000),
            }],
            scratch: dir.path().to_path_buf(),
            gateway_log: "warn".into(),
            kv_events: true,
            replicas: 2,
        };
        write_config(&plan, dir.path()).unwrap();
        let pool = std::fs::read_to_string(dir.path().join("inference-pool.yaml")).unwrap();
        assert!(pool.contains("routing-strategy: \"LORA_AFFINITY\""));
        let extra = std::fs::read_to_string(dir.path().join("extra-models.yaml")).unwrap();
        assert!(extra.contains("modelName: adapter-1"));
        assert!(pool.contains("flow-control.inference-gateway.dev/enabled: \"false\""));
        assert!(pool.contains("kv-events.inference-gateway.dev/enabled: \"true\""));
        assert!(pool.contains("kv-events.inference-gateway.dev/replay-port: \"5558\""));
        let objectives = std::fs::read_to_string(dir.path().join("objectives.yaml")).unwrap();
        assert!(objectives.contains(
            "  name: batch\n  annotations:\n    flow-control.inference-gateway.dev/ttl-ms: \"600000\"\nspec:\n  priority: -1\n"
        ));
    }

    #[test]
    fn one_profile_applies_to_every_simulator_and_a_list_per_simulator() {
        let one = vec!["a10-qwen2.5-7b".to_string()];
        assert_eq!(profile_for(&one, 4), "a10-qwen2.5-7b");
        let mix: Vec<String> = ["a", "a", "a", "l", "l"].map(String::from).to_vec();
        assert_eq!(profile_for(&mix, 0), "a");
        assert_eq!(profile_for(&mix, 3), "l");
    }
}
