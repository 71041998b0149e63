//! Files generated from the gateway's own definitions and committed: the CRDs (`crdgen`, from the
//! Rust types) and the dashboards and alert rules (`dashboards`, from the metric definitions).
//!
//! Both generators share one command line and one behaviour: write the files under `--out`, or
//! with `--check` compare them with the committed copies and fail on any difference, so CI catches
//! a definition changed without its files regenerated. Only the generator binaries use this module;
//! the gateway never writes these files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

/// A generator's command line (its name and description are the binary's, [`Self::parse_for`]).
#[derive(Debug, Parser)]
pub struct GeneratorArgs {
    /// Directory the files go to.
    #[arg(long)]
    pub out: PathBuf,
    /// Only compare: exit 1 when a file is missing or differs.
    #[arg(long)]
    pub check: bool,
}

impl GeneratorArgs {
    /// Parse the process's arguments for the generator `name` (described as `about`), whose files
    /// go to `default_out` (the committed copies) unless `--out` says otherwise.
    pub fn parse_for(
        name: &'static str,
        about: &'static str,
        default_out: &'static str,
    ) -> GeneratorArgs {
        let matches = command(name, default_out).about(about).get_matches();
        GeneratorArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

fn command(name: &'static str, default_out: &'static str) -> clap::Command {
    GeneratorArgs::command()
        .name(name)
        .mut_arg("out", |out| out.default_value(default_out).required(false))
}

/// A generated file: where it goes under the output directory, and its text.
#[derive(Debug, Clone)]
pub struct GeneratedFile {
    /// Path relative to the output directory.
    pub path: PathBuf,
    /// The whole file.
    pub text: String,
}

/// A generated file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct GeneratedFileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Write `files`, or with `--check` compare them with what is there, naming every file that is
/// missing or differs and then `regenerate`, the command that rewrites them. `Ok(false)` when a
/// check found a difference.
pub fn write_or_check(
    args: &GeneratorArgs,
    files: &[GeneratedFile],
    regenerate: &str,
) -> Result<bool, GeneratedFileError> {
    let mut clean = true;
    for file in files {
        let path = args.out.join(&file.path);
        if args.check {
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing == file.text => {}
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
        let failed = |action, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| GeneratedFileError {
                action,
                path,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed("creating", dir))?;
        }
        std::fs::write(&path, &file.text).map_err(failed("writing", &path))?;
        println!("wrote {}", path.display());
    }
    if !clean {
        eprintln!("the committed files are stale: run `{regenerate}`");
    }
    Ok(clean)
}

/// The exit code of a generator run: success only when everything was written or was current.
pub fn exit_code(result: Result<bool, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> GeneratedFile {
        GeneratedFile {
            path: path.into(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn writes_then_checks_and_finds_a_stale_or_missing_file() {
        let dir = std::env::temp_dir().join(format!("igw-generated-{}", std::process::id()));
        let args = |check| GeneratorArgs {
            out: dir.clone(),
            check,
        };
        let files = [file("a.json", "{}\n"), file("sub/b.yaml", "b: 1\n")];
        assert!(write_or_check(&args(false), &files, "regenerate").unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("sub/b.yaml")).unwrap(),
            "b: 1\n"
        );
        assert!(write_or_check(&args(true), &files, "regenerate").unwrap());
        let changed = [file("a.json", "{\"x\": 1}\n"), file("c.yaml", "")];
        assert!(!write_or_check(&args(true), &changed[..1], "regenerate").unwrap());
        assert!(!write_or_check(&args(true), &changed[1..], "regenerate").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_output_directory_is_the_generators_own() {
        let matches = command("crdgen", "manifests/crds")
            .try_get_matches_from(["crdgen", "--check"])
            .unwrap();
        let args = GeneratorArgs::from_arg_matches(&matches).unwrap();
        assert_eq!(args.out, PathBuf::from("manifests/crds"));
        assert!(args.check);
    }
}
