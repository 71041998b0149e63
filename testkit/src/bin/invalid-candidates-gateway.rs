//! `invalid-candidates-gateway`: the inference gateway with a deliberately faulty strategy, for
//! tests that check what the gateway does with whatever a plugin returns. Test-only; it is built
//! on the public API alone (`plugins` and `gateway::GatewayBuilder`), like a third-party plugin.
//!
//! `OUT_OF_RANGE` answers every pick with `[usize::MAX, usize::MAX - 1, 0, 0, 1, …, n - 1]`: two
//! indexes no pool has, a repeat, then every endpoint of the pool. A request carrying the header
//! `x-test-shed` is shed by the strategy instead ([`NoEndpoint::Shed`]).

use std::process::ExitCode;
use std::sync::Arc;

use plugins::params::Params;
use plugins::{Candidates, NoEndpoint, PoolView, RequestView, Strategy, StrategyConfig};

/// The registry name of the faulty strategy.
const NAME: &str = "OUT_OF_RANGE";

/// The request header that makes the strategy shed.
const SHED_HEADER: &str = "x-test-shed";

/// Returns indexes outside the pool and a repeat before the real endpoints.
struct OutOfRange;

impl Strategy for OutOfRange {
    fn pick(
        &self,
        request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        if request.headers.contains_key(SHED_HEADER) {
            return Err(NoEndpoint::Shed(format!("{NAME} sheds on {SHED_HEADER}")));
        }
        let mut order = vec![usize::MAX, usize::MAX - 1, 0];
        order.extend(0..pool.len());
        Ok(Candidates::new(order))
    }
}

fn main() -> ExitCode {
    let gateway = gateway::GatewayBuilder::new().strategy(NAME, |config: &StrategyConfig| {
        Params::new(NAME, config).finish()?;
        Ok(Arc::new(OutOfRange) as Arc<dyn Strategy>)
    });
    match gateway.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
