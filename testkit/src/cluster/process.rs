//! A server process of the test cluster that cannot outlive the test.
//!
//! Each server runs under a small `sh` wrapper whose standard input is a pipe from the test
//! process. The wrapper starts the server in the background and blocks reading that pipe; when the
//! pipe closes, because the test stopped the server or because the test process ended in any way
//! (a panic, an abort, SIGKILL), it sends the server SIGTERM. So no etcd or kube-apiserver is left
//! running after a test binary, without a reaper or unsafe code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The wrapper: fd 3 keeps the pipe (an asynchronous list's stdin would be /dev/null), the server
/// gets no stdin, its pid is printed first, and the wrapper's exit status is the server's.
const WRAPPER: &str = r#"exec 3<&0 0</dev/null
"$@" & server=$!
echo "$server"
{ read -r _ <&3; kill -TERM "$server" 2>/dev/null; } &
wait "$server""#;

/// A running server.
#[derive(Debug)]
pub struct Supervised {
    pub name: &'static str,
    pub log: PathBuf,
    pid: u32,
    wrapper: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    /// Start `binary` with `args`, its output appended to `log`.
    pub fn spawn(name: &'static str, binary: &Path, args: &[String], log: &Path) -> Supervised {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the cluster directory is writable");
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", binary.display()));
        // The first line is the server's pid; the server writes its own output to stderr (both
        // etcd and kube-apiserver log there).
        let mut stdout = wrapper.stdout.take().expect("piped");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let pid = String::from_utf8_lossy(&line)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: the wrapper printed no pid"));
        Supervised {
            name,
            log: log.to_owned(),
            pid,
            stdin: wrapper.stdin.take(),
            wrapper,
        }
    }

    /// Whether the server is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.wrapper.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stop the server: SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.stdin.take();
        let start = Instant::now();
        while self.running() {
            if start.elapsed() > grace {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                let _ = self.wrapper.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server at once (SIGKILL), as a crashed process would end.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        self.stdin.take();
        let _ = self.wrapper.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `lines` lines of the log at `path`, without kube-apiserver's listing of its flags.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.contains("] FLAG: --")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
