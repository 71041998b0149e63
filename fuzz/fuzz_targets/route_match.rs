//! Route matching on client-controlled paths, hosts and query strings. Nothing may panic.
#![no_main]

use gateway::snapshot::routes::{PathMatch, hostname_matches};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (a, b, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let _ = hostname_matches(a, b);
    let _ = hostname_matches(b, a);
    for matcher in [PathMatch::prefix(a), PathMatch::Exact(a.to_owned())] {
        let _ = matcher.matches_path(b);
        let _ = matcher.matches_path(c);
    }
    if let Ok(regex) = gateway::snapshot::routes::full_match_regex(a) {
        let _ = PathMatch::Regex(regex).matches_path(b);
    }
});
