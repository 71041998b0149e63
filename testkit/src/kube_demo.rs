//! The seed, as written, through `kubectl`: a real API server ([`TestCluster`]) holding the seed's
//! objects, the gateway reading them with `--source kube` as its ServiceAccount, and five
//! simulated vLLM pods behind them. `scripts/kube-demo.sh` runs it for a person
//! (`src/bin/kube-demo.rs`); `gateway/tests/kube_cluster.rs` runs the same steps as a test.
//!
//! The steps are the seed's own, in its order: the CRDs applied (TestCluster installs
//! `manifests/crds/` and the Gateway API; the demo adds `manifests/crds/optional/` for the seed's
//! BackendTrafficPolicy), `kubectl apply -f manifests/deploy/` (namespace, RBAC, the gateway's
//! Deployment and Services), `kubectl apply -f manifests/examples/seed/` (the seed's YAML with only
//! the GatewayClass `controllerName` changed), then the seed's two requests to
//! `${GATEWAY_HOST}:8080` and `:8081`, `GATEWAY_HOST` read from the Gateway's status as the seed
//! reads it.
//!
//! What a cluster would do and this one cannot (no kubelet, no controllers, no cloud) the demo does
//! by hand and says so: the five Pods of the seed's Deployment are created Ready with the addresses
//! of five `vllm-sim` servers (127.0.0.2-6:8000, the seed Deployment's flags, in this process); the
//! gateway runs as a local process instead of the Deployment's pod, with a TokenRequest token of
//! its ServiceAccount; the load balancer's address (127.0.0.1, where the gateway listens) is written
//! into its Service's status, as a cloud controller would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use crate::cluster::TestCluster;
use crate::k8s::{Object as _, Pod};
use loadtest::sim::config::SimConfig;
use loadtest::sim::server::SimServer;

/// The pods' addresses: the five replicas of the seed's Deployment.
pub const POD_IPS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
    Ipv4Addr::new(127, 0, 0, 6),
];
/// The seed's container port and InferencePool `targetPortNumber`.
pub const POD_PORT: u16 = 8000;
/// The seed Gateway's listeners: the plain route and the inference route.
pub const SEED_PORTS: [u16; 2] = [8080, 8081];
/// Where the gateway listens, and so the load-balancer address written into its Service.
pub const GATEWAY_HOST: &str = "127.0.0.1";

/// The gateway's namespace and ServiceAccount (`manifests/deploy/`).
const NAMESPACE: &str = "inference-gateway";
const SERVICE_ACCOUNT: &str = "inference-gateway";

/// How long the gateway may take to list everything and write the Gateway's status.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The seed's two requests (its steps 4 and 5): the port and the city the critic writes about.
pub const SEED_REQUESTS: [(u16, &str); 2] = [(8080, "San Francisco"), (8081, "Los Angeles")];

/// The body of a seed request, as the page writes it.
pub fn seed_body(city: &str) -> String {
    format!(
        r#"{{
    "model": "/model/qwen",
    "max_completion_tokens": 100,
    "temperature": 0,
    "messages": [
      {{
        "role": "user",
        "content": "Write as if you were a critic: {city}"
      }}
    ]
}}"#
    )
}

/// The kinds whose status the demo shows. The seed's pool is `inference.networking.x-k8s.io`
/// (v1alpha2); with the v1 CRD (`inference.networking.k8s.io`) installed too, kubectl resolves a
/// bare `inferencepool` to the v1 group, so the pool is named with its group. The seed's
/// InferenceModel is shown as well.
pub const STATUS_KINDS: &str =
    "inferencepool.inference.networking.x-k8s.io,inferencemodel,httproute,gateway";

/// The command a person types for [`KubeDemo::statuses_yaml`].
pub const STATUS_COMMAND: &str = "kubectl get inferencepool.inference.networking.x-k8s.io,inferencemodel,httproute,gateway -o yaml";

/// What to run.
#[derive(Debug, Clone)]
pub struct KubeDemoPlan {
    /// The `inference-gateway` binary.
    pub gateway_binary: PathBuf,
    /// The gateway's admin listener (`/readyz`, `/metrics`, `/debug/snapshot`).
    pub admin: SocketAddr,
    /// The simulators' speed-up (1 = the A10 profile's real pace).
    pub time_scale: f64,
}

/// The running demo: the cluster, the simulators and the gateway. Dropping it stops them all.
pub struct KubeDemo {
    cluster: TestCluster,
    gateway: tokio::process::Child,
    gateway_log: PathBuf,
    dir: PathBuf,
    _sims: Vec<SimServer>,
}

impl Drop for KubeDemo {
    fn drop(&mut self) {
        let _ = self.gateway.start_kill();
        if std::env::var_os("IGW_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One of the seed's requests and the gateway's answer.
#[derive(Debug, Clone)]
pub struct SeedAnswer {
    /// The curl command the seed gives for it, with `GATEWAY_HOST` filled in.
    pub curl: String,
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: String,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is inside the repository")
        .to_owned()
}

/// The seed Deployment's five replicas: `vllm-sim` with the Deployment's flags
/// ([`loadtest::procs::seed_sim_command`]) on [`POD_IPS`]:[`POD_PORT`].
async fn start_sims(time_scale: f64) -> Result<Vec<SimServer>, String> {
    let mut sims = Vec::new();
    for (index, ip) in POD_IPS.iter().enumerate() {
        let command = loadtest::procs::seed_sim_command(
            Path::new("vllm-sim"),
            &ip.to_string(),
            POD_PORT,
            "a10-qwen2.5-7b",
            time_scale,
            index as u64,
            &[],
        );
        let config = SimConfig::from_command_line(command.get_args())
            .map_err(|e| format!("the seed's simulator flags: {e}"))?;
        let sim = SimServer::start(config)
            .await
            .map_err(|e| format!("vllm-sim on {ip}:{POD_PORT}: {e}"))?;
        sims.push(sim);
    }
    Ok(sims)
}

/// Fails when something already listens on `address`.
fn ensure_free(address: SocketAddr) -> Result<(), String> {
    loadtest::procs::ensure_free(address).map_err(|e| e.to_string())
}

impl KubeDemo {
    /// Run every step up to the seed's requests, reporting each on `progress`. Fails with a
    /// message when a port the seed uses is taken or the gateway does not come up; the cluster's
    /// own failures panic with the failing binary's log tail ([`TestCluster`]).
    pub async fn start(plan: &KubeDemoPlan, progress: impl Fn(&str)) -> Result<KubeDemo, String> {
        for port in SEED_PORTS {
            ensure_free(SocketAddr::new(GATEWAY_HOST.parse().unwrap(), port))?;
        }
        ensure_free(plan.admin)?;
        for ip in POD_IPS {
            ensure_free(SocketAddr::new(IpAddr::V4(ip), POD_PORT))?;
        }

        progress(
            "Starting etcd and kube-apiserver (tools/k8s, scripts/build-k8s.sh) with RBAC on;",
        );
        progress("  the CRDs of manifests/crds/ and the Gateway API are applied and established.");
        let cluster = TestCluster::start().await;
        let kubeconfig = cluster.admin_kubeconfig().display().to_string();
        progress(&format!("  export KUBECONFIG={kubeconfig}"));
        progress(&format!(
            "  export PATH={}:$PATH   # kubectl",
            crate::cluster::binaries().display()
        ));

        let apply = async |path: &str| {
            let path = repository().join(path).display().to_string();
            cluster.kubectl_ok(&["apply", "-f", &path]).await
        };
        progress(
            "\n$ kubectl apply -f manifests/crds/optional/   # the seed's BackendTrafficPolicy",
        );
        progress(apply("manifests/crds/optional").await.trim_end());
        cluster.wait_crds_established().await;
        progress("\n$ kubectl apply -f manifests/deploy/");
        progress(apply("manifests/deploy").await.trim_end());
        progress("\n$ kubectl apply -f manifests/examples/seed/");
        progress(apply("manifests/examples/seed").await.trim_end());

        progress(&format!(
            "\nThe seed Deployment's five pods: vllm-sim (A10 profile, the Deployment's flags, time scale {}) on 127.0.0.2-6:{POD_PORT};",
            plan.time_scale
        ));
        progress(
            "  with no kubelet here, their Pod objects are created Ready with those addresses.",
        );
        let sims = start_sims(plan.time_scale).await?;
        for (index, ip) in POD_IPS.iter().enumerate() {
            let pod = Pod::qwen(&format!("qwen-{index}"), IpAddr::V4(*ip), true);
            cluster.apply(&pod.to_yaml()).await;
        }
        progress(
            cluster
                .kubectl_ok(&["get", "pods", "-l", "app=qwen", "-o", "wide"])
                .await
                .trim_end(),
        );

        progress(&format!(
            "\nThe load balancer of Service {NAMESPACE}/inference-gateway gets {GATEWAY_HOST} (a cloud controller's job)."
        ));
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "inference-gateway", "namespace": NAMESPACE},
        });
        cluster
            .write_status(
                &service,
                &json!({"loadBalancer": {"ingress": [{"ip": GATEWAY_HOST}]}}),
            )
            .await;

        let dir = std::env::temp_dir().join(format!("igw-kube-demo-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let token = cluster.token(NAMESPACE, SERVICE_ACCOUNT).await;
        let gateway_kubeconfig = cluster.token_kubeconfig(&dir, &token, NAMESPACE);
        let gateway_log = dir.join("gateway.log");
        progress(&format!(
            "\nThe gateway, --source kube, as ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT} (a TokenRequest token); log: {}",
            gateway_log.display()
        ));
        let log = std::fs::File::create(&gateway_log)
            .map_err(|e| format!("{}: {e}", gateway_log.display()))?;
        let gateway = tokio::process::Command::new(&plan.gateway_binary)
            .args(["--source", "kube", "--kubeconfig"])
            .arg(&gateway_kubeconfig)
            .args([
                "--kube-gateway-service",
                "inference-gateway/inference-gateway",
            ])
            .args(["--kube-identity", "kube-demo"])
            .args(["--listen-host", GATEWAY_HOST])
            .args(["--admin-addr", &plan.admin.to_string()])
            .args(["--grace-period", "1s", "--drain-delay", "0s"])
            .env(
                "RUST_LOG",
                std::env::var("IGW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("GATEWAY_SERVICE")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", plan.gateway_binary.display()))?;
        let mut demo = KubeDemo {
            cluster,
            gateway,
            gateway_log,
            dir,
            _sims: sims,
        };
        demo.wait_programmed(plan.admin).await?;
        Ok(demo)
    }

    /// Wait for `/readyz` and for the Gateway's status to carry `Programmed=True` and an
    /// address; fails early if the gateway exits.
    async fn wait_programmed(&mut self, admin: SocketAddr) -> Result<(), String> {
        let client = crate::client();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.gateway.try_wait() {
                return Err(format!(
                    "the gateway exited ({status}); its log ends:\n{}",
                    self.log_tail(20)
                ));
            }
            let ready = matches!(
                client.get(format!("http://{admin}/readyz").parse().unwrap()).await,
                Ok(r) if r.status() == 200
            );
            if ready && self.gateway_host().await.is_some() {
                return Ok(());
            }
            if start.elapsed() > READY_WITHIN {
                return Err(format!(
                    "the gateway did not program Gateway default/qwen-inference-gateway within {READY_WITHIN:?}; its log ends:\n{}",
                    self.log_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kubectl get gateway/qwen-inference-gateway -o jsonpath='{.status.addresses[0].value}'`
    /// once the Gateway is `Programmed`: the seed's step 3.
    pub async fn gateway_host(&self) -> Option<String> {
        let gateway = self
            .cluster
            .get("gateway", "default", "qwen-inference-gateway")
            .await?;
        let programmed = gateway["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True");
        let address = gateway["status"]["addresses"][0]["value"].as_str()?;
        programmed.then(|| address.to_owned())
    }

    /// Send the seed's two requests to `GATEWAY_HOST` (from the Gateway's status).
    pub async fn seed_requests(&self) -> Result<Vec<SeedAnswer>, String> {
        let host = self
            .gateway_host()
            .await
            .ok_or("the Gateway has no address in its status")?;
        let client = crate::client();
        let mut answers = Vec::new();
        for (port, city) in SEED_REQUESTS {
            let body = seed_body(city);
            let uri = format!("http://{host}:{port}/v1/chat/completions");
            let request = hyper::Request::post(&uri)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                .map_err(|e| e.to_string())?;
            let response = tokio::time::timeout(READY_WITHIN, client.request(request))
                .await
                .map_err(|_| format!("POST {uri}: no answer within {READY_WITHIN:?}"))?
                .map_err(|e| format!("POST {uri}: {e}"))?;
            let status = response.status().as_u16();
            let body_bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("POST {uri}: {e}"))?
                .to_bytes();
            answers.push(SeedAnswer {
                curl: format!(
                    "curl -X POST ${{GATEWAY_HOST}}:{port}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
                ),
                status,
                body: String::from_utf8_lossy(&body_bytes).into_owned(),
            });
        }
        Ok(answers)
    }

    /// [`STATUS_COMMAND`]: the statuses the gateway wrote.
    pub async fn statuses_yaml(&self) -> String {
        self.cluster
            .kubectl_ok(&["get", STATUS_KINDS, "-o", "yaml"])
            .await
    }

    /// The cluster, for further `kubectl`.
    pub fn cluster(&self) -> &TestCluster {
        &self.cluster
    }

    /// The gateway's log file.
    pub fn gateway_log(&self) -> &Path {
        &self.gateway_log
    }

    /// The last `lines` lines of the gateway's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.gateway_log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails if the gateway has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.gateway.try_wait() {
            Ok(Some(status)) => Err(format!(
                "the gateway exited ({status}); its log ends:\n{}",
                self.log_tail(20)
            )),
            _ => Ok(()),
        }
    }
}

/// The answer's model, completion tokens and the start of its text, on one line.
pub fn summary(answer: &SeedAnswer) -> String {
    let value: Value = serde_json::from_str(&answer.body).unwrap_or_default();
    if answer.status != 200 {
        return format!("HTTP {}: {}", answer.status, answer.body.trim());
    }
    format!(
        "HTTP 200, model {}, {} completion tokens, finish_reason {}: {:.70}...",
        value["model"],
        value["usage"]["completion_tokens"],
        value["choices"][0]["finish_reason"],
        value["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
    )
}
