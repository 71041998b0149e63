//! Command-line flags of the `inference-gateway` binary (and of binaries built with
//! [`crate::GatewayBuilder`], which share them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The controller name GatewayClasses must name for their Gateways to be served.
pub const DEFAULT_CONTROLLER_NAME: &str = "inference-gateway.dev/controller";

fn duration(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse_duration(text)?
        .ok_or_else(|| "must be greater than zero".to_owned())
}

fn duration_or_zero(text: &str) -> Result<Duration, String> {
    Ok(crate::config::duration::parse_duration(text)?.unwrap_or(Duration::ZERO))
}

fn byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}; use B, KiB, MiB or GiB")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive size"))
}

/// Pingora's own ceiling on a request head.
pub const PINGORA_MAX_HEADER_BYTES: usize = 1_048_575;

fn header_size(text: &str) -> Result<usize, String> {
    let size = byte_size(text)?;
    if size > PINGORA_MAX_HEADER_BYTES {
        return Err(format!(
            "must be at most {PINGORA_MAX_HEADER_BYTES} bytes (Pingora's own limit)"
        ));
    }
    Ok(size)
}

/// Pingora's own deadline on each read of a request header.
pub const PINGORA_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

fn header_timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration(text)?;
    if timeout > PINGORA_HEADER_READ_TIMEOUT {
        return Err("must be at most 60s (Pingora's own limit on each header read)".to_owned());
    }
    Ok(timeout)
}

/// Where the gateway's objects come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// YAML files (`--config`), or the embedded local example.
    File,
    /// The Kubernetes API (in-cluster service account or kubeconfig), with status written back.
    Kube,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An LLM inference gateway on Pingora: Gateway API routes, InferencePool backends, pluggable
/// routing strategies.
#[derive(Debug, Clone, Parser)]
#[command(name = "inference-gateway", version)]
pub struct Args {
    /// Where objects come from: `file` (`--config`, or the embedded example) or `kube` (the
    /// Kubernetes API; see the `--kube-*` flags).
    #[arg(long, value_enum, default_value = "file", env = "GATEWAY_SOURCE")]
    pub source: SourceKind,

    /// YAML file or directory of Kubernetes objects (GatewayClass, Gateway, HTTPRoute, Service,
    /// Pod, InferencePool, InferenceModel). Repeatable. Watched and reloaded on change. Without it,
    /// the embedded local example is served.
    #[arg(long = "config", value_name = "PATH")]
    pub config: Vec<PathBuf>,

    /// Check the configuration, print every problem, and exit (non-zero on errors).
    #[arg(long)]
    pub validate: bool,

    /// GatewayClasses naming this controller are served.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME, env = "GATEWAY_CONTROLLER_NAME")]
    pub controller_name: String,

    /// Address the Gateway listeners bind to (their ports come from the Gateway objects).
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_host: String,

    /// Admin listener: /healthz, /readyz, /metrics, /debug/snapshot.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// Largest request body read on inference routes; larger bodies get 413.
    #[arg(long, default_value = "16MiB", value_parser = byte_size)]
    pub max_body_bytes: usize,

    /// How long one read of a client's request body may wait before the gateway gives up on a
    /// slow or stalled client and closes its connection; `0s` waits forever.
    #[arg(long, default_value = "60s", value_parser = duration_or_zero)]
    pub client_read_timeout: Duration,

    /// Largest request head (request line and header fields) accepted; larger ones get 431. At
    /// most 1,048,575 bytes (1 MiB less one): Pingora rejects heads above that (and above 256
    /// header fields) with a plain 400.
    #[arg(long, default_value = "64KiB", value_parser = header_size)]
    pub max_header_bytes: usize,

    /// How long a client connection may take to deliver a complete request header, counted from
    /// accept or, on a keep-alive connection, from the end of the previous response (so it also
    /// bounds idle keep-alive). At most 60 s, Pingora's own limit on each read of a header.
    #[arg(long, default_value = "60s", value_parser = header_timeout)]
    pub client_header_timeout: Duration,

    /// Most client connections open at once across the Gateway listeners; a connection beyond it
    /// gets a 503 and is closed. `0` for no cap. Each proxied connection can use a second file
    /// descriptor upstream, so keep it under half the process's open-file limit.
    #[arg(long, default_value = "10000")]
    pub max_connections: usize,

    /// TCP connect timeout per upstream attempt.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// How long idle upstream connections are pooled. Keep it below the model servers'
    /// keep-alive (5 s for vLLM's uvicorn) so a pooled connection is never one they closed.
    #[arg(long, default_value = "4s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,

    /// Whole-request timeout when neither the HTTPRoute rule (`timeouts.request`) nor a
    /// BackendTrafficPolicy sets one; `0s` disables it.
    #[arg(long, default_value = "1h", value_parser = duration_or_zero)]
    pub request_timeout: Duration,

    /// How often the configuration files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub config_poll_interval: Duration,

    /// How often every pool endpoint's /metrics is scraped.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    pub scrape_interval: Duration,

    /// Limit of one metrics scrape; a slower endpoint's metrics go stale and it counts as saturated.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub scrape_timeout: Duration,

    /// Bound of the index of KV-cache blocks built from the pools' KV events (pools annotated
    /// `kv-events.inference-gateway.dev/enabled: "true"`), in (endpoint, block) entries of about
    /// 150 bytes each; past it the oldest blocks are forgotten.
    #[arg(long, default_value_t = crate::kv_events::DEFAULT_MAX_BLOCKS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000_000))]
    pub kv_events_max_blocks: usize,

    /// Deadline of each exchange with an external endpoint picker (a pool's v1
    /// `endpointPickerRef`): from sending the request to having its destination and body back,
    /// and again for reporting the served endpoint. A picker that misses it counts as down, and
    /// the pool's `failureMode` decides (`FailClose`: 503; `FailOpen`: the built-in strategy).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub picker_timeout: Duration,

    /// Also serve the built-in strategies as an endpoint picker (ext_proc, the Inference
    /// Extension's EPP protocol) for this pool, `namespace/name`, so that another proxy (Envoy
    /// Gateway, Istio, kgateway, agentgateway) can route it with them.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub epp_pool: Option<String>,

    /// Address of the endpoint-picker ext_proc server (`--epp-pool`); it also answers gRPC health.
    #[arg(long, default_value = "0.0.0.0:9002")]
    pub epp_addr: SocketAddr,

    /// Address of the endpoint picker's separate gRPC health server (`--epp-pool`), as the
    /// Inference Extension's EPP has it.
    #[arg(long, default_value = "0.0.0.0:9003")]
    pub epp_health_addr: SocketAddr,

    /// Proxy worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,

    /// On SIGTERM, how long requests in flight may continue after the listeners close; the
    /// process exits as soon as none is left. Long enough for long generations.
    #[arg(long, default_value = "300s", value_parser = duration)]
    pub grace_period: Duration,

    /// On SIGTERM, how long /readyz reports not-ready before the listeners close, so load
    /// balancers stop sending new connections first. `0s` closes them at once.
    #[arg(long, default_value = "5s", value_parser = duration_or_zero)]
    pub drain_delay: Duration,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Flags of the kube source.
    #[command(flatten)]
    pub kube: crate::kubernetes::KubeArgs,
}

impl Args {
    /// How the gateway talks to external endpoint pickers.
    pub fn picker_settings(&self) -> epp::ClientSettings {
        epp::ClientSettings {
            deadline: self.picker_timeout,
            connect_timeout: self.connect_timeout.min(self.picker_timeout),
            ..epp::ClientSettings::default()
        }
    }

    /// The default request timeout, `None` when disabled.
    pub fn default_request_timeout(&self) -> Option<Duration> {
        (!self.request_timeout.is_zero()).then_some(self.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("0").is_err());
        assert!(byte_size("12 parsecs").is_err());
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("0s").is_err());
        assert_eq!(duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(header_size("1048575"), Ok(PINGORA_MAX_HEADER_BYTES));
        assert!(header_size("1MiB").is_err());
        assert_eq!(header_timeout("60s"), Ok(Duration::from_secs(60)));
        assert!(header_timeout("61s").is_err());
    }

    #[test]
    fn defaults() {
        let args = Args::parse_from(["inference-gateway"]);
        assert_eq!(args.max_body_bytes, 16 << 20);
        assert_eq!(args.max_header_bytes, 64 << 10);
        assert_eq!(args.client_header_timeout, Duration::from_secs(60));
        assert_eq!(args.max_connections, 10_000);
        assert_eq!(args.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(
            args.default_request_timeout(),
            Some(Duration::from_secs(3600))
        );
        let none = Args::parse_from(["inference-gateway", "--request-timeout", "0s"]);
        assert_eq!(none.default_request_timeout(), None);
        assert!(args.config.is_empty());
        assert_eq!(args.source, SourceKind::File);
        assert_eq!(args.kube.kube_debounce, Duration::from_millis(100));
    }
}
