//! A real Kubernetes control plane for tests: etcd and kube-apiserver, built from the releases
//! pinned in `tools/k8s` (`scripts/build-k8s.sh`), on loopback ports chosen at run time.
//!
//! [`TestCluster::start`] generates certificates, starts etcd and the API server with
//! `--authorization-mode=RBAC` and ServiceAccount token signing, waits for `/readyz`, and installs
//! the repository's CRDs (`manifests/crds/`, Gateway API included, the optional ones left out).
//! Everything the tests do goes through `kubectl` with an admin certificate, or through a
//! ServiceAccount token from the TokenRequest API ([`TestCluster::token`]) — so the gateway under
//! test meets real validation, real watches and real RBAC. Dropping the cluster stops both servers
//! and removes its directory; the servers also stop if the test process dies (see [`process`]).
//!
//! There is no kubelet, scheduler or controller manager: Pods are objects whose status the tests
//! write ([`TestCluster::apply`] writes a `status` it is given through the status subresource),
//! and the ServiceAccount admission plugin is off because no controller creates `default`
//! ServiceAccounts. The API server writes an audit log of every request made by a user outside
//! `system:masters` ([`TestCluster::audit`]), which is how tests see what the gateway asked for.
//!
//! Errors say which binary failed and show the end of its log.

mod certs;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::free_port;
use process::Supervised;

/// How long the API server may take to become ready (a cold start on 2 busy cores takes seconds).
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// The repository root (testkit lives one level below it).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is inside the repository")
        .to_owned()
}

/// The directory holding `etcd`, `kube-apiserver` and `kubectl`: `$IGW_K8S_BIN`, or what
/// `scripts/build-k8s.sh` prints (it builds them on first use and reuses them afterwards).
pub fn binaries() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("IGW_K8S_BIN") {
            return PathBuf::from(dir);
        }
        let script = repository().join("scripts/build-k8s.sh");
        let output = std::process::Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed (it needs Go 1.26 or newer; see the README)",
            script.display()
        );
        let text = String::from_utf8_lossy(&output.stdout);
        PathBuf::from(
            text.lines()
                .last()
                .expect("build-k8s.sh prints the directory")
                .trim(),
        )
    })
    .clone()
}

const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  userGroups: [\"system:masters\"]
- level: Metadata
";

/// A running etcd and kube-apiserver.
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    etcd: Supervised,
    etcd_url: String,
    apiserver: Option<Supervised>,
    apiserver_args: Vec<String>,
    port: u16,
    ca: PathBuf,
    admin_kubeconfig: PathBuf,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("server", &self.server())
            .field("etcd", &self.etcd_url)
            .finish_non_exhaustive()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop(Duration::from_secs(5));
        }
        self.etcd.stop(Duration::from_secs(5));
        if std::env::var_os("IGW_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A kubeconfig for `server` with the CA at `ca` and the user given as kubeconfig YAML lines.
fn kubeconfig(server: &str, ca: &Path, namespace: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n{user}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user, namespace: {namespace}}}\ncurrent-context: test\n",
        ca.display()
    )
}

impl TestCluster {
    /// Start etcd and kube-apiserver, wait until the API server is ready, and install the CRDs.
    pub async fn start() -> TestCluster {
        Self::start_with(&[]).await
    }

    /// [`TestCluster::start`] with extra kube-apiserver flags (`--watch-cache=false`, say).
    pub async fn start_with(apiserver_flags: &[&str]) -> TestCluster {
        let bin = binaries();
        let dir = std::env::temp_dir().join(format!(
            "igw-cluster-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let certs = certs::generate(&dir).expect("test certificates");

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args: Vec<String> = [
            "--name=test",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=test={peer_url}"),
            // A test cluster's data is thrown away; fsync would only slow every write.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let etcd = Supervised::spawn("etcd", &bin.join("etcd"), &etcd_args, &dir.join("etcd.log"));

        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY).expect("writable");
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let apiserver_args: Vec<String> = [
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", path(&certs.serving_cert)),
            format!("--tls-private-key-file={}", path(&certs.serving_key)),
            format!("--client-ca-file={}", path(&certs.ca)),
            "--authorization-mode=RBAC".into(),
            format!(
                "--service-account-key-file={}",
                path(&certs.service_account_public_key)
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(&certs.service_account_key)
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // No controller manager creates `default` ServiceAccounts for Pods to refer to.
            "--disable-admission-plugins=ServiceAccount".into(),
            format!(
                "--audit-policy-file={}",
                dir.join("audit-policy.yaml").display()
            ),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--audit-log-mode=blocking".into(),
            "--v=1".into(),
        ]
        .into_iter()
        .chain(apiserver_flags.iter().map(|flag| flag.to_string()))
        .collect();
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        let server = format!("https://127.0.0.1:{port}");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig(
                &server,
                &certs.ca,
                "default",
                &format!(
                    "    client-certificate: {}\n    client-key: {}",
                    path(&certs.admin_cert),
                    path(&certs.admin_key)
                ),
            ),
        )
        .expect("writable");

        let mut cluster = TestCluster {
            dir,
            bin,
            etcd,
            etcd_url,
            apiserver: None,
            apiserver_args,
            port,
            ca: certs.ca,
            admin_kubeconfig,
        };
        cluster.start_apiserver().await;
        cluster.install_crds("manifests/crds").await;
        cluster.install_crds("manifests/crds/gateway-api").await;
        cluster
    }

    /// Apply the CRDs in `directory` (relative to the repository) and wait until the API server
    /// serves them (`Established`).
    pub async fn install_crds(&self, directory: &str) {
        let path = repository().join(directory).display().to_string();
        self.kubectl_ok(&["apply", "--server-side", "-f", &path])
            .await;
        self.wait_crds_established().await;
    }

    /// Wait until the API server serves every CRD applied so far (`Established`).
    pub async fn wait_crds_established(&self) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .await;
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The cluster's working directory (certificates, logs, etcd's data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (a client certificate in `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The API server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Write a kubeconfig for `token` (default namespace `namespace`) into `dir` and return its path.
    pub fn token_kubeconfig(&self, dir: &Path, token: &str, namespace: &str) -> PathBuf {
        self.token_kubeconfig_via(&self.server(), dir, token, namespace)
    }

    /// [`TestCluster::token_kubeconfig`] reaching the API server at `server` (a proxy in front
    /// of it, say; the serving certificate is for 127.0.0.1).
    pub fn token_kubeconfig_via(
        &self,
        server: &str,
        dir: &Path,
        token: &str,
        namespace: &str,
    ) -> PathBuf {
        let path = dir.join(format!("token-{}.kubeconfig", fastrand::u64(..)));
        let user = format!("    token: {token}");
        std::fs::write(&path, kubeconfig(server, &self.ca, namespace, &user)).expect("writable");
        path
    }

    /// Start the API server (again) and wait until it is ready.
    pub async fn start_apiserver(&mut self) {
        assert!(
            self.apiserver.is_none(),
            "the API server is already running"
        );
        let mut apiserver = Supervised::spawn(
            "kube-apiserver",
            &self.bin.join("kube-apiserver"),
            &self.apiserver_args,
            &self.dir.join("kube-apiserver.log"),
        );
        let start = Instant::now();
        loop {
            if !self.etcd.running() {
                panic!(
                    "etcd exited; the end of its log ({}):\n{}",
                    self.etcd.log.display(),
                    self.etcd.log_tail(30)
                );
            }
            if !apiserver.running() {
                panic!(
                    "kube-apiserver exited before it was ready; the end of its log ({}):\n{}",
                    apiserver.log.display(),
                    apiserver.log_tail(30)
                );
            }
            if self
                .kubectl(&["get", "--raw", "/readyz"])
                .await
                .is_ok_and(|body| body.trim() == "ok")
            {
                break;
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "kube-apiserver was not ready within {READY_DEADLINE:?}; the end of its log ({}):\n{}",
                    apiserver.log.display(),
                    apiserver.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.apiserver = Some(apiserver);
    }

    /// Stop the API server (SIGTERM; SIGKILL after 10 s, as a kubelet would after a short grace
    /// period); etcd keeps running.
    pub async fn stop_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            tokio::task::spawn_blocking(move || apiserver.stop(Duration::from_secs(30)))
                .await
                .expect("stopping the API server");
        }
    }

    /// Run kubectl as the admin; stdout on success, the command and stderr on failure.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_with_input(args, None).await
    }

    /// Run kubectl as the admin with `input` on its standard input.
    pub async fn kubectl_with_input(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, String> {
        let mut command = tokio::process::Command::new(self.bin.join("kubectl"));
        command
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("kubectl does not start: {e}"))?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(|e| format!("kubectl {}: writing its input: {e}", args.join(" ")))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| format!("kubectl {}: {e}", args.join(" ")))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Run kubectl as the admin and panic (with its error) if it fails.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl(args).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Apply YAML documents (server-side apply, as field manager `testkit`). A document's
    /// `status`, if any, is then written through the status subresource, as a kubelet or a
    /// controller would; Pods get their Ready condition and IP this way.
    pub async fn apply(&self, yaml: &str) {
        let documents: Vec<Value> = serde_yaml::Deserializer::from_str(yaml)
            .map(|document| {
                serde_yaml::from_value::<Value>(
                    serde::Deserialize::deserialize(document).expect("valid YAML"),
                )
                .expect("a YAML object")
            })
            .filter(|document| !document.is_null())
            .collect();
        for mut document in documents {
            let status = document
                .as_object_mut()
                .and_then(|object| object.remove("status"));
            let text = document.to_string();
            self.kubectl_with_input(
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=testkit",
                    "-f",
                    "-",
                ],
                Some(&text),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
            if let Some(status) = status.filter(|s| !s.is_null()) {
                self.write_status(&document, &status).await;
            }
        }
    }

    /// Replace the `status` of the object `document` names (a merge patch of the status
    /// subresource).
    pub async fn write_status(&self, document: &Value, status: &Value) {
        let kind = document["kind"].as_str().expect("kind");
        let name = document["metadata"]["name"]
            .as_str()
            .expect("metadata.name");
        let namespace = document["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let resource = match api_group(document) {
            "" => kind.to_lowercase(),
            group => format!("{}.{group}", kind.to_lowercase()),
        };
        let patch = serde_json::json!({ "status": status }).to_string();
        self.kubectl_ok(&[
            "patch",
            &resource,
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await;
    }

    /// The object `kind/name` (`kind` as kubectl names it, e.g. `pod` or
    /// `inferencepools.inference.networking.k8s.io`), or `None` if there is none.
    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        match self
            .kubectl(&["get", kind, name, "-n", namespace, "-o", "json"])
            .await
        {
            Ok(text) => Some(serde_json::from_str(&text).expect("kubectl prints JSON")),
            Err(e) if e.contains("NotFound") || e.contains("not found") => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Delete `kind/name` at once (no grace period: there is no kubelet to confirm).
    pub async fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.kubectl_ok(&[
            "delete",
            kind,
            name,
            "-n",
            namespace,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await;
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (valid for an hour).
    pub async fn token(&self, namespace: &str, name: &str) -> String {
        self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"])
            .await
            .trim()
            .to_owned()
    }

    /// etcd's current revision.
    pub async fn etcd_revision(&self) -> u64 {
        let reply = self.etcd_call("/v3/kv/range", r#"{"key":"AA=="}"#).await;
        reply["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("etcd's range reply has no revision: {reply}"))
    }

    /// Compact etcd's history up to its current revision (as the API server's periodic compaction
    /// would, sooner) and return that revision: a watch from an older resourceVersion then gets
    /// 410 Gone.
    pub async fn compact(&self) -> u64 {
        let revision = self.etcd_revision().await;
        self.etcd_call(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )
        .await;
        revision
    }

    /// A call to etcd's JSON gateway.
    async fn etcd_call(&self, path: &str, body: &str) -> Value {
        let uri = format!("{}{path}", self.etcd_url);
        let request = hyper::Request::post(&uri)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .expect("a valid request");
        let response = crate::client()
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("etcd at {uri}: {e}\n{}", self.etcd.log_tail(20)));
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("etcd's reply")
            .to_bytes();
        assert!(
            status.is_success(),
            "etcd {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("etcd answers JSON")
    }

    /// The audit log so far: one event per request by a user outside `system:masters` (the
    /// gateway's ServiceAccount, for one), at the `Metadata` level.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The end of a server's log, for failure messages.
    pub fn log_tail(&self, binary: &str, lines: usize) -> String {
        process::log_tail(&self.dir.join(format!("{binary}.log")), lines)
    }
}

/// The API group of a document's `apiVersion` (empty for the core group).
fn api_group(document: &Value) -> &str {
    let api_version = document["apiVersion"].as_str().unwrap_or("v1");
    match api_version.rsplit_once('/') {
        Some((group, _)) => group,
        None => "",
    }
}
