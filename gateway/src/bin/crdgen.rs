//! `crdgen`: writes the CustomResourceDefinitions generated from the gateway's Rust types to
//! `manifests/crds/` (or `--out DIR`), or with `--check` compares them with what is committed and
//! fails on any difference, so CI catches a type change whose CRDs were not regenerated.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use gateway::kubernetes::crds::crd_files;

/// Generate the CRDs of the gateway's types.
#[derive(Debug, Parser)]
#[command(name = "crdgen")]
struct Args {
    /// Directory the CRDs go to.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds"))]
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

fn run(args: Args) -> Result<bool> {
    let mut clean = true;
    for file in crd_files() {
        let path = args.out.join(file.path);
        let text = file.render();
        if args.check {
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing == text => {}
                Ok(_) => {
                    eprintln!("{}: differs from the generated CRD", path.display());
                    clean = false;
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    clean = false;
                }
            }
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if args.check && !clean {
        eprintln!(
            "the committed CRDs are stale: run `cargo run -p inference-gateway --bin crdgen`"
        );
    }
    Ok(clean)
}
