//! `dashboards`: writes the Grafana dashboards and the Prometheus alert rules of
//! `manifests/observability/` (or `--out DIR`) from the gateway's own metric definitions, or with
//! `--check` compares them with what is committed and fails on any difference, so CI catches a
//! dashboard edited by hand or a metric change whose dashboards were not regenerated.
//!
//! Every query is checked before anything is written (`promql.rs`): a gateway metric or label the
//! gateway does not define stops the run with the list of problems. Whether the queries return
//! data is `gateway/tests/observability.rs`'s job, against a real Prometheus.

mod alerts;
mod grafana;
mod panels;
mod promql;
mod vllm;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::panels::Sources;

/// Generate the dashboards and alert rules.
#[derive(Debug, Parser)]
#[command(name = "dashboards")]
struct Args {
    /// Directory the files go to.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/observability"))]
    out: PathBuf,
    /// Only compare: exit 1 when a file is missing or differs.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The generated files, by name, after every query passed its checks.
fn outputs() -> Result<Vec<(&'static str, String)>> {
    let sources = Sources::new();
    let gateway = panels::gateway(&sources);
    let vllm = vllm::dashboard();
    let rules = alerts::rules(&sources);
    let queries = gateway
        .queries()
        .map(|(title, expr)| (format!("gateway dashboard, {title}"), expr))
        .chain(
            vllm.queries()
                .map(|(title, expr)| (format!("vLLM dashboard, {title}"), expr)),
        )
        .chain(
            rules
                .iter()
                .map(|rule| (format!("alert {}", rule.name), &rule.query)),
        );
    let mut problems = Vec::new();
    for (place, expr) in queries {
        problems.extend(expr.problems().iter().map(|p| format!("{place}: {p}")));
        for name in sources.catalogue.unknown_names(expr.text()) {
            problems.push(format!(
                "{place}: {name} is not a metric the gateway defines (GatewayMetrics)"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s) in the queries:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(vec![
        ("gateway-dashboard.json", gateway.render()),
        ("vllm-dashboard.json", vllm.render()),
        ("alerts.yaml", alerts::render(&rules)),
    ])
}

fn run(args: Args) -> Result<bool> {
    let mut clean = true;
    for (name, text) in outputs()? {
        let path = args.out.join(name);
        if args.check {
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing == text => {}
                Ok(_) => {
                    eprintln!("{}: differs from the generated file", path.display());
                    clean = false;
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    clean = false;
                }
            }
            continue;
        }
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if args.check && !clean {
        eprintln!(
            "the committed dashboards are stale: run `cargo run -p inference-gateway --bin dashboards`"
        );
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_files_are_the_generated_ones() {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/observability"
        ));
        for (name, text) in outputs().unwrap() {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(
                committed == text,
                "{name} is stale: run `cargo run -p inference-gateway --bin dashboards`"
            );
        }
    }
}
