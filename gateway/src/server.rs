//! Assembling and running the gateway process: configuration, Pingora server, listeners, admin
//! listener and background tasks.
//!
//! [`GatewayBuilder`] is the public entry point: `inference-gateway`'s `main` is
//! `GatewayBuilder::new().run()`, and a third-party binary registers its own strategies first and
//! then runs exactly the same gateway (same flags, same sources, same metrics).

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use plugins::{Registry, StrategyFactory};

use crate::admin::AdminApp;
use crate::cli::{Args, LogFormat, SourceKind};
use crate::config::Severity;
use crate::drain::{DrainMonitor, DrainSignal};
use crate::kubernetes::KubeSource;
use crate::kv_events::KvEvents;
use crate::proxy::connections::{ConnectionLimits, ConnectionMetrics, LimitedApp};
use crate::proxy::forward::{Forwarder, UPSTREAM_POOL_SIZE, UpstreamSettings};
use crate::proxy::{ClientLimits, GatewayProxy};
use crate::scrape::{ScrapeSettings, Scraper};
use crate::snapshot::{Backend, HealthPolicy};
use crate::source::{
    BuildSettings, Built, ConfigSource, ConfigWatcher, load_and_build, log_issues,
};
use crate::state::{ConfigStatus, GatewayState};

/// Builds and runs a gateway.
#[derive(Debug)]
pub struct GatewayBuilder {
    registry: Registry,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    /// A builder with the built-in strategies.
    pub fn new() -> Self {
        Self {
            registry: Registry::with_builtins(),
        }
    }

    /// Register an extra strategy, selectable by `name` in the pool annotation.
    pub fn strategy(mut self, name: impl Into<String>, factory: impl StrategyFactory) -> Self {
        self.registry.register(name, factory);
        self
    }

    /// The registry as it stands.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Parse the process arguments and run. Returns only on a configuration error or after
    /// `--validate`.
    pub fn run(self) -> anyhow::Result<()> {
        self.run_with(Args::parse())
    }

    /// Run with already-parsed arguments.
    pub fn run_with(self, args: Args) -> anyhow::Result<()> {
        init_logging(args.log_format);
        let settings = BuildSettings {
            controller_name: args.controller_name.clone(),
            default_request_timeout: args.default_request_timeout(),
            registry: Arc::new(self.registry),
            picker: args.picker_settings(),
            listeners_required: args.epp_pool.is_none(),
        };
        if args.source == SourceKind::Kube {
            return run_kube(args, settings);
        }
        let source = if args.config.is_empty() {
            ConfigSource::Embedded
        } else {
            ConfigSource::Files(args.config.clone())
        };
        let built = load_and_build(&source, &settings, None);
        if args.validate {
            return report_validation(&source.describe(), &built);
        }
        log_issues(&built.issues);
        if !built.is_usable() {
            bail!("the configuration has errors (run with --validate for the full list)");
        }
        tracing::info!(target: "config", source = %source.describe(), "{}", summary(&built));
        serve(args, Source::Files { source, settings }, built)
    }
}

/// `--source kube`: connect, wait for the first complete view, then serve it. Unlike the file
/// source, errors in some objects do not stop the gateway: those objects are left out, reported
/// in the log and in their status, and everything else is served.
fn run_kube(args: Args, settings: BuildSettings) -> anyhow::Result<()> {
    if !args.config.is_empty() {
        bail!("--config is for --source file; --source kube reads the Kubernetes API");
    }
    let kube = KubeSource::start(&args.kube, settings)?;
    if args.validate {
        let built = kube.synced_build()?;
        return report_validation(&kube.describe(), &built);
    }
    let built = kube.initial_build()?;
    log_issues(&built.issues);
    tracing::info!(target: "config", source = %kube.describe(), "{}", summary(&built));
    serve(args, Source::Kube(Box::new(kube)), built)
}

/// What keeps the snapshot current once the gateway serves.
enum Source {
    /// The file watcher.
    Files {
        source: ConfigSource,
        settings: BuildSettings,
    },
    /// The Kubernetes reflectors.
    Kube(Box<KubeSource>),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Files { source, .. } => source.describe(),
            Source::Kube(kube) => kube.describe(),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// One line describing what a snapshot serves.
pub fn summary(built: &Built) -> String {
    let snapshot = &built.snapshot;
    let listeners: usize = snapshot.ports.values().map(|p| p.listeners.len()).sum();
    let ports: Vec<String> = snapshot.ports.keys().map(ToString::to_string).collect();
    let routes: usize = snapshot
        .ports
        .values()
        .flat_map(|p| &p.listeners)
        .map(|l| l.entries.len())
        .sum();
    let pools: Vec<String> = snapshot
        .pools
        .values()
        .map(|p| {
            let strategy = if p.resolution.requested == p.resolution.implementation {
                p.resolution.requested.clone()
            } else {
                format!(
                    "{} -> {}",
                    p.resolution.requested, p.resolution.implementation
                )
            };
            let rewrites = p.rewrites.exact.len() + usize::from(p.rewrites.generic.is_some());
            let picker = match &p.picker {
                Some(picker) if picker.is_external() => format!(", endpoint picker {}", picker.name),
                _ => String::new(),
            };
            format!(
                "{} ({} endpoints, {} models, {} model rewrites, {} objectives, strategy {strategy}{picker})",
                p.key.qualified_name(),
                p.endpoints.len(),
                p.models.len(),
                rewrites,
                p.objectives.len()
            )
        })
        .collect();
    let services: Vec<String> = snapshot
        .services
        .values()
        .map(|s| {
            format!(
                "{}:{} ({} endpoints)",
                s.key.qualified_name(),
                s.port,
                s.endpoints.len()
            )
        })
        .collect();
    let invalid = snapshot
        .ports
        .values()
        .flat_map(|p| &p.listeners)
        .flat_map(|l| &l.entries)
        .flat_map(|e| &e.action.backends)
        .filter(|b| matches!(b.backend, Backend::Invalid(_)))
        .count();
    format!(
        "{listeners} listeners on ports {}; {routes} route matches ({invalid} invalid backend refs); pools: {}; services: {}",
        ports.join(", "),
        if pools.is_empty() {
            "none".into()
        } else {
            pools.join("; ")
        },
        if services.is_empty() {
            "none".into()
        } else {
            services.join("; ")
        },
    )
}

fn report_validation(source: &str, built: &Built) -> anyhow::Result<()> {
    for issue in &built.issues {
        println!("{issue}");
    }
    for ignored in &built.ignored {
        let origin = ignored
            .origin
            .as_ref()
            .map_or_else(String::new, |o| format!(" ({o})"));
        println!(
            "note: {} {}{origin}: kind {} of {} is not used by the gateway; ignored",
            ignored.kind, ignored.name, ignored.kind, ignored.api_version
        );
    }
    let errors = built
        .issues
        .iter()
        .filter(|i| i.severity == Severity::Error)
        .count();
    let warnings = built.issues.len() - errors;
    if errors > 0 {
        bail!("{source}: {errors} error(s), {warnings} warning(s)");
    }
    println!("ok: {source}: {}; {warnings} warning(s)", summary(built));
    Ok(())
}

fn serve(args: Args, source: Source, built: Built) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime_dir =
        std::env::temp_dir().join(format!("inference-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&runtime_dir).context("creating the runtime directory")?;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(args.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: UPSTREAM_POOL_SIZE,
        pid_file: runtime_dir.join("gateway.pid").display().to_string(),
        upgrade_sock: runtime_dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let ports: Vec<u16> = built.snapshot.ports.keys().copied().collect();
    let config = ConfigStatus {
        source: source.describe(),
        last_result: "initial".into(),
        issues: built.issues.clone(),
    };
    // Ready after the first round of metrics scrapes (the scraper sets it).
    let mut state = GatewayState::new(built.snapshot, config, ports.clone());
    state.kv_events = Arc::new(KvEvents::new(args.kv_events_max_blocks));
    let state = Arc::new(state);
    let limits = ClientLimits {
        max_body_bytes: args.max_body_bytes,
        read_timeout: (!args.client_read_timeout.is_zero()).then_some(args.client_read_timeout),
        max_header_bytes: args.max_header_bytes,
    };
    let forwarder = Forwarder::new(UpstreamSettings {
        connect_timeout: args.connect_timeout,
        idle_timeout: args.upstream_idle_timeout,
        health: HealthPolicy::default(),
    });
    raise_open_file_limit(args.max_connections);
    let connection_limits = ConnectionLimits {
        max_connections: args.max_connections,
        header_timeout: Some(args.client_header_timeout),
    };
    let connection_metrics = ConnectionMetrics {
        open: state.metrics.connections_open.clone(),
        refused: state.metrics.connections_refused.clone(),
        header_timeouts: state.metrics.header_timeouts.clone(),
    };
    let gateway = GatewayProxy::new(Arc::clone(&state), limits, forwarder);
    let mut proxy = Service::new(
        "gateway".to_owned(),
        LimitedApp::new(
            pingora::proxy::http_proxy(&server.configuration, gateway),
            connection_limits,
            connection_metrics,
        ),
    );
    // SO_REUSEPORT: a new gateway process can bind the same ports while the old one drains
    // (rolling restarts, several processes on one host).
    let mut socket = TcpSocketOptions::default();
    socket.so_reuseport = Some(true);
    for port in &ports {
        proxy.add_tcp_with_settings(&format!("{}:{port}", args.listen_host), socket.clone());
    }
    let mut admin = Service::new("admin".to_owned(), AdminApp::new(Arc::clone(&state)));
    admin.add_tcp(&args.admin_addr.to_string());
    let scraper = Scraper::new(
        Arc::clone(&state),
        ScrapeSettings {
            interval: args.scrape_interval,
            timeout: args.scrape_timeout,
        },
    );
    let drain_signal = DrainSignal {
        state: Arc::clone(&state),
        drain_delay: args.drain_delay,
    };
    let active = Arc::clone(&state.active);
    let epp_state = Arc::clone(&state);
    server.add_service(proxy);
    server.add_service(admin);
    match source {
        Source::Files { source, settings } => {
            let watcher = ConfigWatcher::new(
                source,
                settings,
                state,
                args.config_poll_interval,
                built.fingerprint,
            );
            server.add_service(background_service("config watcher", watcher));
        }
        Source::Kube(kube) => {
            server.add_service(background_service(
                "kube source",
                (*kube).serve(state, built.issues),
            ));
        }
    }
    if let Some(pool) = &args.epp_pool {
        let epp = crate::epp_server::EppService::bind(
            Arc::clone(&epp_state),
            pool,
            args.epp_addr,
            args.epp_health_addr,
        )?;
        server.add_service(background_service("endpoint picker", epp));
    }
    server.add_service(background_service("metrics scraper", scraper));
    server.add_service(background_service("drain monitor", DrainMonitor { active }));
    tracing::info!(ports = ?ports, admin = %args.admin_addr, threads, "inference gateway starting");
    server.run(RunArgs {
        shutdown_signal: Box::new(drain_signal),
    });
    Ok(())
}

/// Make room in the open-file limit for `max_connections` client connections, each with an
/// upstream connection, plus a margin for pooled connections, scrapes and files: raise the soft
/// limit toward the hard one if it is lower, and warn if even the hard limit is short.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if max_connections == 0 {
        return;
    }
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(1024);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= needed {
        return;
    }
    let raised = needed.min(hard);
    let now = match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
        Ok(()) => raised,
        Err(_) => soft,
    };
    if now < needed {
        tracing::warn!(
            open_file_limit = now,
            max_connections,
            "the open-file limit is below what --max-connections needs ({needed}); \
             connections past it fail to be accepted; lower --max-connections or raise the limit"
        );
    } else {
        tracing::info!(
            from = soft,
            to = now,
            "raised the open-file limit for --max-connections"
        );
    }
}
