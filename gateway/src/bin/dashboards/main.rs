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

use std::process::ExitCode;

use anyhow::{Result, bail};
use gateway::generated::{GeneratedFile, GeneratorArgs, exit_code, write_or_check};

use crate::panels::Sources;

fn main() -> ExitCode {
    let args = GeneratorArgs::parse_for(
        "dashboards",
        "Generate the dashboards and alert rules from the gateway's metric definitions.",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/observability"),
    );
    let regenerate = "cargo run -p inference-gateway --bin dashboards";
    exit_code(outputs().and_then(|files| Ok(write_or_check(&args, &files, regenerate)?)))
}

/// The generated files, once every query has passed its checks.
fn outputs() -> Result<Vec<GeneratedFile>> {
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
    let file = |path: &str, text| GeneratedFile {
        path: path.into(),
        text,
    };
    Ok(vec![
        file("gateway-dashboard.json", gateway.render()),
        file("vllm-dashboard.json", vllm.render()),
        file("alerts.yaml", alerts::render(&rules)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_files_are_the_generated_ones() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/observability"
        ));
        for file in outputs().unwrap() {
            let committed = std::fs::read_to_string(dir.join(&file.path)).unwrap();
            assert!(
                committed == file.text,
                "{} is stale: run `cargo run -p inference-gateway --bin dashboards`",
                file.path.display()
            );
        }
    }
}
