//! `inference-gateway`: wiring only. Everything it runs is [`gateway::GatewayBuilder`].

use std::process::ExitCode;

/// jemalloc, as Pingora's own deployments use: the proxy allocates and frees per request, and
/// glibc's allocator spent a sixth of the proxy's instructions doing so (measured with callgrind).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match gateway::GatewayBuilder::new().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
