//! The Go interop programs of `tools/epp` as test fixtures: finding the binaries, running
//! `static-epp` as a child process (killed on drop) and running `fake-envoy` once. Also compiled
//! into the `epp` crate's tests (by path), so it uses nothing but std, tokio and serde_json.
//!
//! Process plumbing only: this module must not assert anything about the protocol. Every wait has a
//! deadline; nothing sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// The directory holding `static-epp` and `fake-envoy`: `$EPP_TOOLS_BIN`, or what
/// `scripts/build-epp-tools.sh` prints (it builds once, then reuses).
pub fn tools_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("EPP_TOOLS_BIN").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let out = Command::new("bash")
            .arg(root.join("scripts/build-epp-tools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-epp-tools.sh");
        assert!(
            out.status.success(),
            "scripts/build-epp-tools.sh failed: {}",
            out.status
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("the script prints the bin directory")
                .trim(),
        )
    })
    .clone()
}

/// A running `static-epp`; killed when dropped.
pub struct StaticEpp {
    child: Child,
    pub ext_proc: SocketAddr,
    pub health: SocketAddr,
    pub admin: SocketAddr,
}

impl StaticEpp {
    /// Starts `static-epp` on free ports with `--endpoints endpoints` and `extra` flags, and waits
    /// (with a deadline) for its listening line.
    pub fn start(endpoints: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(tools_bin().join("static-epp"))
            .args([
                "--port",
                "0",
                "--health-port",
                "0",
                "--admin-port",
                "0",
                "--endpoints",
                endpoints,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start static-epp");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, listening) = mpsc::channel();
        // Drains stderr for the process's whole life, so that its logging never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("static-epp: listening") {
                    let _ = lines.send(line);
                } else {
                    eprintln!("{line}");
                }
            }
        });
        let line = listening
            .recv_timeout(Duration::from_secs(30))
            .expect("static-epp prints its listening line");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {line:?}"))
        };
        StaticEpp {
            ext_proc: field("ext_proc="),
            health: field("health="),
            admin: field("admin="),
            child,
        }
    }

    /// `GET /served` on the admin port, parsed.
    pub fn served(&self) -> serde_json::Value {
        let mut stream = TcpStream::connect(self.admin).expect("connect to the admin port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /served HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read /served");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "GET /served: {head}"
        );
        serde_json::from_str(body).expect("/served is JSON")
    }

    /// Kills the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StaticEpp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one `fake-envoy` run printed.
pub struct FakeEnvoyRun {
    pub code: i32,
    pub output: serde_json::Value,
    pub stderr: String,
}

/// Runs `fake-envoy --epp epp args...` to completion off the async runtime (the server under test
/// runs on it), with fake-envoy's own `--timeout` as the deadline.
pub async fn fake_envoy(epp: SocketAddr, args: Vec<String>) -> FakeEnvoyRun {
    let binary = tools_bin().join("fake-envoy");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .args(["--epp", &epp.to_string(), "--timeout", "20s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run fake-envoy")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let output = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("fake-envoy output {stdout:?}: {e}"))
    };
    FakeEnvoyRun {
        code: out.status.code().unwrap_or(-1),
        output,
        stderr,
    }
}
