//! `inference-gateway`: wiring only. Everything it runs is [`gateway::GatewayBuilder`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match gateway::GatewayBuilder::new().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
