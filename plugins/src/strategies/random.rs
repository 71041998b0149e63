//! `RANDOM`: a uniformly random first choice, then the rest of the pool in a random order.
//!
//! No parameters. Uses a thread-local fast PRNG (`fastrand`), so picks never contend.

use crate::endpoint::PoolView;
use crate::request::RequestView;
use crate::strategy::{Candidates, NoEndpoint, Strategy};

/// Uniformly random endpoint order.
#[derive(Debug, Default)]
pub struct Random;

impl Random {
    /// Registry name.
    pub const NAME: &'static str = "RANDOM";

    /// The strategy.
    pub fn new() -> Self {
        Random
    }
}

impl Strategy for Random {
    fn pick(
        &self,
        _request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        if pool.is_empty() {
            return Err(NoEndpoint::NoneReady);
        }
        let mut order: Vec<usize> = (0..pool.len()).collect();
        fastrand::shuffle(&mut order);
        Ok(Candidates::new(order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pool_of, request};

    #[test]
    fn every_endpoint_is_listed_once_and_first_picks_spread() {
        let (_ids, views) = pool_of(4);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let headers = http::HeaderMap::new();
        let mut firsts = [0u32; 4];
        for _ in 0..4000 {
            let c = Random.pick(&request(&headers), &pool).unwrap();
            let mut sorted = c.as_slice().to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            firsts[c.first().unwrap()] += 1;
        }
        // Each share is 1000 in expectation; 800 is more than six standard deviations below.
        assert!(firsts.iter().all(|&n| n > 800), "{firsts:?}");
    }
}
