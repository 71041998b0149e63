//! `ROUND_ROBIN`: each request starts one endpoint further along the pool than the last.
//!
//! No parameters. The rotation counter is one atomic shared by all worker threads; the candidate
//! list is the whole pool from that starting point, so a failed connection moves to the next
//! endpoint in rotation order.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::endpoint::PoolView;
use crate::request::RequestView;
use crate::strategy::{Candidates, NoEndpoint, Strategy};

/// Round-robin over the eligible endpoints.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Registry name.
    pub const NAME: &'static str = "ROUND_ROBIN";

    /// A rotation starting at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for RoundRobin {
    fn pick(
        &self,
        _request: &RequestView<'_>,
        pool: &PoolView<'_>,
    ) -> Result<Candidates, NoEndpoint> {
        if pool.is_empty() {
            return Err(NoEndpoint::NoneReady);
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Ok(Candidates::rotation(first, pool.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pool_of, request};

    #[test]
    fn rotates_through_every_endpoint() {
        let (_ids, views) = pool_of(3);
        let pool = PoolView {
            name: "p",
            endpoints: &views,
        };
        let rr = RoundRobin::new();
        let headers = http::HeaderMap::new();
        let picks: Vec<usize> = (0..6)
            .map(|_| rr.pick(&request(&headers), &pool).unwrap().first().unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(
            rr.pick(&request(&headers), &pool).unwrap().as_slice(),
            &[0, 1, 2]
        );
    }

    #[test]
    fn empty_pool_has_no_endpoint() {
        let rr = RoundRobin::new();
        let headers = http::HeaderMap::new();
        let pool = PoolView {
            name: "p",
            endpoints: &[],
        };
        assert_eq!(
            rr.pick(&request(&headers), &pool),
            Err(NoEndpoint::NoneReady)
        );
    }
}
