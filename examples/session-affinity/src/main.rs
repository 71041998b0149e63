//! `session-affinity-gateway`: the inference gateway with one more strategy registered. Same flags,
//! sources and metrics as `inference-gateway`; pools may now say
//! `inference.networking.x-k8s.io/routing-strategy: SESSION_AFFINITY`.

use std::process::ExitCode;
use std::sync::Arc;

use plugins::{Strategy, StrategyConfig};
use session_affinity::SessionAffinity;

fn main() -> ExitCode {
    let gateway = gateway::GatewayBuilder::new().strategy(
        SessionAffinity::NAME,
        |config: &StrategyConfig| {
            Ok(Arc::new(SessionAffinity::from_config(config)?) as Arc<dyn Strategy>)
        },
    );
    match gateway.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
