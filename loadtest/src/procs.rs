//! Child processes of the kit (simulators, the gateway): started with their output to log
//! files, waited on until they answer a readiness URL (polling with a deadline, never a fixed
//! sleep), watched for early exits, and always stopped: [`Processes`] kills and reaps every child
//! when dropped, so an error, a panic or an interrupted future leaves nothing behind.
//!
//! It also holds what the fleet check, `compare` and `demo` share: the seed Deployment's
//! `vllm-sim` command line and the per-process CPU time read from `/proc`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::StreamClient;

/// Why a process could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({binary}): {source}")]
    Spawn {
        name: String,
        binary: String,
        source: std::io::Error,
    },
    #[error("{name} exited early ({status}); its log: {log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },
    #[error("{name} did not answer 200 on {url} within {seconds} s; its log: {log}")]
    NotReady {
        name: String,
        url: String,
        seconds: u64,
        log: String,
    },
    #[error("{0} is already in use: stop whatever listens there (another demo or compare?)")]
    PortInUse(SocketAddr),
    #[error("creating log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A set of children that are killed and reaped on drop.
#[derive(Default)]
pub struct Processes {
    children: Vec<Managed>,
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("{} (last lines: {tail:?})", path.display())
}

impl Processes {
    pub fn new() -> Self {
        Processes::default()
    }

    /// Starts `command` as `name`, its stdout and stderr appended to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        mut command: Command,
        log: &Path,
    ) -> Result<u32, ProcessError> {
        let file = std::fs::File::create(log).map_err(|source| ProcessError::Log {
            path: log.display().to_string(),
            source,
        })?;
        let err = file.try_clone().map_err(|source| ProcessError::Log {
            path: log.display().to_string(),
            source,
        })?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                name: name.to_string(),
                binary: command.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let pid = child.id();
        self.children.push(Managed {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        });
        Ok(pid)
    }

    /// Fails if any child has exited.
    pub fn check_alive(&mut self) -> Result<(), ProcessError> {
        for managed in &mut self.children {
            if let Ok(Some(status)) = managed.child.try_wait() {
                return Err(ProcessError::Exited {
                    name: managed.name.clone(),
                    status: status.to_string(),
                    log: log_tail(&managed.log, 5),
                });
            }
        }
        Ok(())
    }

    /// Process ids by name, in start order.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|m| (m.name.clone(), m.child.id()))
            .collect()
    }

    /// Polls `url` until it answers 200, failing when `deadline` passes or a child exits.
    pub async fn wait_ready(
        &mut self,
        client: &StreamClient,
        name: &str,
        url: &str,
        within: Duration,
    ) -> Result<(), ProcessError> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                client.request(http::Method::GET, url, None),
            )
            .await;
            if let Ok(Ok((200, _))) = answer {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self
                    .children
                    .iter()
                    .find(|m| m.name == name)
                    .map(|m| log_tail(&m.log, 5))
                    .unwrap_or_default();
                return Err(ProcessError::NotReady {
                    name: name.to_string(),
                    url: url.to_string(),
                    seconds: within.as_secs(),
                    log,
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Kills and reaps every child.
    pub fn stop_all(&mut self) {
        for managed in &mut self.children {
            let _ = managed.child.kill();
            let _ = managed.child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// How often readiness is polled: often enough to add little start-up time, rarely enough to cost
/// nothing.
const READY_POLL: Duration = Duration::from_millis(50);

/// Fails if something already accepts connections on `address`: a stale process would answer
/// in place of the fresh one and silently carry its caches over.
pub fn ensure_free(address: SocketAddr) -> Result<(), ProcessError> {
    match TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
        Ok(_) => Err(ProcessError::PortInUse(address)),
        Err(_) => Ok(()),
    }
}

/// The `/proc/<pid>/stat` CPU time (user + system) of a process, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// The model path the seed's Deployment serves (`root` in `/v1/models`).
pub const SEED_MODEL_ROOT: &str = "/models/Qwen-2.5-7B-Instruct";
/// The served model name of the seed's Deployment.
pub const SEED_SERVED_NAME: &str = "/model/qwen";
/// The seed Deployment's two adapters.
pub const SEED_LORA_MODULES: [&str; 2] = [
    "travel-helper-v1=/models/Qwen-TravelHelper-Lora",
    "travel-helper-v2=/models/Qwen-TravelHelper-Lora-v2",
];

/// A `vllm-sim` command line with the seed Deployment's flags (`--gpu-memory-utilization 0.95
/// --enforce-eager --enable-lora --max-loras 2 --max-cpu-loras 4`) on `host:port`. `lora_modules`
/// replaces the seed's two adapters when not empty.
pub fn seed_sim_command(
    binary: &Path,
    host: &str,
    port: u16,
    profile: &str,
    time_scale: f64,
    seed: u64,
    lora_modules: &[String],
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(SEED_MODEL_ROOT)
        .args(["--host", host, "--port", &port.to_string()])
        .args([
            "--trust-remote-code",
            "--served-model-name",
            SEED_SERVED_NAME,
        ])
        .args(["--gpu-memory-utilization", "0.95", "--enforce-eager"])
        .args(["--enable-lora", "--max-loras", "2", "--max-cpu-loras", "4"])
        .arg("--lora-modules");
    if lora_modules.is_empty() {
        command.args(SEED_LORA_MODULES);
    } else {
        command.args(lora_modules);
    }
    command
        .args([
            "--profile",
            profile,
            "--time-scale",
            &time_scale.to_string(),
        ])
        .args(["--seed", &seed.to_string()])
        .env("RUST_LOG", "warn");
    command
}

/// The binary `name` next to the running executable (cargo puts a workspace's binaries together).
pub fn sibling_binary(name: &str) -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn children_are_killed_on_drop_and_early_exits_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut processes = Processes::new();
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        let pid = processes
            .spawn("sleeper", sleeper, &dir.path().join("sleep.log"))
            .unwrap();
        assert!(processes.check_alive().is_ok());
        drop(processes);
        // Reaped: the pid no longer names our child.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains("(sleep)") || stat.contains(" Z "));

        let mut processes = Processes::new();
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo boom; exit 3"]);
        processes
            .spawn("failing", failing, &dir.path().join("fail.log"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            if let Err(error) = processes.check_alive() {
                break error;
            }
            assert!(Instant::now() < deadline, "the child never exited");
            std::thread::yield_now();
        };
        let text = error.to_string();
        assert!(
            text.contains("failing exited early") && text.contains("boom"),
            "{text}"
        );
    }
}
