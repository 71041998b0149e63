//! `crdgen`: writes the CustomResourceDefinitions generated from the gateway's Rust types to
//! `manifests/crds/` (or `--out DIR`), or with `--check` compares them with what is committed and
//! fails on any difference, so CI catches a type change whose CRDs were not regenerated.

use std::process::ExitCode;

use gateway::generated::{GeneratedFile, GeneratorArgs, exit_code, write_or_check};
use gateway::kubernetes::crds::crd_files;

fn main() -> ExitCode {
    let args = GeneratorArgs::parse_for(
        "crdgen",
        "Generate the CRDs of the gateway's types.",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds"),
    );
    let files: Vec<GeneratedFile> = crd_files()
        .into_iter()
        .map(|file| GeneratedFile {
            path: file.path.into(),
            text: file.render(),
        })
        .collect();
    exit_code(write_or_check(
        &args,
        &files,
        "cargo run -p inference-gateway --bin crdgen",
    ))
}
