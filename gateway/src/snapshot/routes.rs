//! HTTPRoute matching: path, method, header and query matches, hostnames, and the Gateway API's
//! precedence between rules.
//!
//! Every rule of every route attached to a listener becomes one [`RouteEntry`] per match; the
//! entries are sorted once, at snapshot build, by [`RouteEntry::precedence`], so a request takes
//! the first entry that matches.

use std::cmp::Reverse;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use super::RuleAction;
use crate::config::ObjectKey;

/// A path match.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A prefix of whole path elements (`/abc` matches `/abc`, `/abc/` and `/abc/d`, not `/abcd`).
    /// Stored without a trailing slash; the root prefix is stored as `""`.
    Prefix(String),
    /// A regular expression the whole path must match.
    Regex(Regex),
}

impl PathMatch {
    /// A prefix match for `value` (trailing slashes are ignored, as the Gateway API specifies).
    pub fn prefix(value: &str) -> Self {
        PathMatch::Prefix(value.trim_end_matches('/').to_owned())
    }

    /// Whether `path` matches.
    pub fn matches_path(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(value) => path == value,
            PathMatch::Prefix(prefix) => {
                path.starts_with(prefix.as_str())
                    && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }
}

/// A header or query-parameter value match.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Exactly this value.
    Exact(String),
    /// A regular expression the whole value must match.
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(expected) => value == expected,
            ValueMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A regular expression anchored at both ends, as the Gateway API's full-match semantics need.
pub fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// One `matches[]` entry of a rule.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The path match.
    pub path: PathMatch,
    /// The method, if the match names one.
    pub method: Option<Method>,
    /// Header matches (names are case-insensitive).
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query-parameter matches (names are case-sensitive).
    pub query: Vec<(String, ValueMatch)>,
}

impl RouteMatch {
    /// The Gateway API's default match: every request.
    pub fn any() -> Self {
        RouteMatch {
            path: PathMatch::prefix("/"),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    /// Whether a request matches.
    pub fn matches(&self, request: &RequestParts<'_>) -> bool {
        self.path.matches_path(request.path)
            && self.method.as_ref().is_none_or(|m| m == request.method)
            && self.headers.iter().all(|(name, value)| {
                request
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| value.matches(v)))
            })
            && self.query.iter().all(|(name, value)| {
                query_pairs(request.query).any(|(k, v)| k == name && value.matches(v))
            })
    }
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Host, without the port.
    pub host: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// Whether `host` matches a Gateway API hostname (`*.example.com` matches one or more labels in
/// front of `example.com`, not `example.com` itself). Comparison ignores ASCII case.
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    let (host, pattern) = (host.as_bytes(), pattern.as_bytes());
    match pattern.strip_prefix(b"*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// One match of one rule, with the rule's action.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The HTTPRoute.
    pub route: ObjectKey,
    /// Index of the rule within the route.
    pub rule: usize,
    /// Index of the match within the rule.
    pub match_index: usize,
    /// The route's hostnames (empty: any host the listener accepts).
    pub hostnames: Vec<String>,
    /// The match.
    pub matcher: RouteMatch,
    /// What to do with a matching request.
    pub action: Arc<RuleAction>,
    /// The route's creation time (seconds since the epoch), for precedence; `None` sorts last.
    pub created: Option<i64>,
    /// Document order of the route, the last tie-breaker before names for file sources.
    pub order: usize,
    /// `namespace/name#rule`, for logs (built once, not per request).
    pub label: std::sync::Arc<str>,
}

/// Sort key: Exact path, then the longest prefix, then method, most headers, most query params;
/// ties go to the oldest route, then `namespace/name` alphabetically, then rule and match order.
type Precedence<'a> = (
    Reverse<(u8, usize)>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    (bool, i64),
    usize,
    (&'a str, &'a str),
    usize,
    usize,
);

impl RouteEntry {
    /// The entry's sort key (smaller sorts first, wins first).
    pub fn precedence(&self) -> Precedence<'_> {
        let path_rank = match &self.matcher.path {
            PathMatch::Exact(value) => (3, value.len()),
            PathMatch::Prefix(value) => (2, value.len()),
            PathMatch::Regex(regex) => (1, regex.as_str().len()),
        };
        (
            Reverse(path_rank),
            Reverse(self.matcher.method.is_some()),
            Reverse(self.matcher.headers.len()),
            Reverse(self.matcher.query.len()),
            (self.created.is_none(), self.created.unwrap_or(0)),
            self.order,
            (&self.route.namespace, &self.route.name),
            self.rule,
            self.match_index,
        )
    }

    fn matches(&self, request: &RequestParts<'_>) -> bool {
        (self.hostnames.is_empty()
            || request
                .host
                .is_some_and(|host| self.hostnames.iter().any(|h| hostname_matches(h, host))))
            && self.matcher.matches(request)
    }
}

/// The routes of one listener.
#[derive(Debug, Clone)]
pub struct ListenerRoutes {
    /// The Gateway.
    pub gateway: ObjectKey,
    /// The listener's name (its `sectionName`).
    pub name: String,
    /// The listener's hostname, if it has one.
    pub hostname: Option<String>,
    /// Entries in precedence order.
    pub entries: Vec<RouteEntry>,
    /// Whether some entry matches on `X-Gateway-Model-Name`, so request bodies must be parsed
    /// before routing.
    pub routes_on_model: bool,
}

impl ListenerRoutes {
    /// The first entry matching `request`.
    pub fn route(&self, request: &RequestParts<'_>) -> Option<&RouteEntry> {
        self.entries.iter().find(|entry| entry.matches(request))
    }
}

/// Listeners sharing one port, most specific hostname first.
#[derive(Debug, Clone, Default)]
pub struct PortRoutes {
    /// The listeners.
    pub listeners: Vec<ListenerRoutes>,
}

impl PortRoutes {
    /// The listener that accepts `host`: an exact hostname first, then the longest wildcard, then
    /// a listener without a hostname.
    pub fn listener(&self, host: Option<&str>) -> Option<&ListenerRoutes> {
        self.listeners.iter().find(|l| match (&l.hostname, host) {
            (None, _) => true,
            (Some(pattern), Some(host)) => hostname_matches(pattern, host),
            (Some(_), None) => false,
        })
    }

    /// Sort listeners by hostname specificity.
    pub fn sort(&mut self) {
        self.listeners.sort_by_key(|l| match &l.hostname {
            Some(h) if !h.starts_with("*.") => (0, Reverse(h.len())),
            Some(h) => (1, Reverse(h.len())),
            None => (2, Reverse(0)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Kind;

    fn parts<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestParts<'a> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        RequestParts {
            method,
            path,
            query,
            host: Some("api.example.com"),
            headers,
        }
    }

    #[test]
    fn prefixes_match_whole_path_elements() {
        let m = PathMatch::prefix("/abc");
        assert!(m.matches_path("/abc"));
        assert!(m.matches_path("/abc/"));
        assert!(m.matches_path("/abc/def"));
        assert!(!m.matches_path("/abcd"));
        assert!(!m.matches_path("/ab"));
        let root = PathMatch::prefix("/");
        assert!(root.matches_path("/") && root.matches_path("/v1/completions"));
        let trailing = PathMatch::prefix("/v1/");
        assert!(trailing.matches_path("/v1") && trailing.matches_path("/v1/models"));
        assert!(!trailing.matches_path("/v10"));
    }

    #[test]
    fn hostnames_and_wildcards() {
        assert!(hostname_matches("*.example.com", "a.example.com"));
        assert!(hostname_matches("*.example.com", "a.b.example.com"));
        assert!(!hostname_matches("*.example.com", "example.com"));
        assert!(!hostname_matches("*.example.com", "aexample.com"));
        assert!(hostname_matches("API.example.com", "api.EXAMPLE.com"));
        assert!(
            !hostname_matches("*.é", "aé"),
            "no slicing inside a character"
        );
    }

    #[test]
    fn headers_method_and_query_are_anded() {
        let matcher = RouteMatch {
            path: PathMatch::prefix("/v1"),
            method: Some(Method::POST),
            headers: vec![(
                HeaderName::from_static("x-gateway-model-name"),
                ValueMatch::Exact("llama".into()),
            )],
            query: vec![(
                "debug".into(),
                ValueMatch::Regex(full_match_regex("1|yes").unwrap()),
            )],
        };
        let mut headers = HeaderMap::new();
        headers.insert("X-Gateway-Model-Name", "llama".parse().unwrap());
        assert!(matcher.matches(&parts(&Method::POST, "/v1/x?debug=yes", &headers)));
        assert!(!matcher.matches(&parts(&Method::POST, "/v1/x?debug=yess", &headers)));
        assert!(!matcher.matches(&parts(&Method::GET, "/v1/x?debug=1", &headers)));
        assert!(!matcher.matches(&parts(&Method::POST, "/v1/x", &headers)));
        assert!(!matcher.matches(&parts(&Method::POST, "/v1/x?debug=1", &HeaderMap::new())));
    }

    fn entry(name: &str, matcher: RouteMatch, created: Option<i64>, order: usize) -> RouteEntry {
        RouteEntry {
            route: ObjectKey::new(Kind::HttpRoute, "default", name),
            rule: 0,
            match_index: 0,
            hostnames: vec![],
            matcher,
            action: Arc::new(RuleAction::invalid("test")),
            created,
            order,
            label: format!("default/{name}#0").into(),
        }
    }

    #[test]
    fn precedence_follows_the_gateway_api() {
        let with_path = |path: PathMatch| RouteMatch {
            path,
            ..RouteMatch::any()
        };
        let mut entries = [
            entry("root", RouteMatch::any(), Some(1), 0),
            entry("v1", with_path(PathMatch::prefix("/v1")), Some(5), 1),
            entry(
                "exact",
                with_path(PathMatch::Exact("/v1/models".into())),
                Some(9),
                2,
            ),
            entry(
                "header",
                RouteMatch {
                    headers: vec![(
                        HeaderName::from_static("x-a"),
                        ValueMatch::Exact("1".into()),
                    )],
                    ..with_path(PathMatch::prefix("/v1"))
                },
                Some(7),
                3,
            ),
            entry("v1-older", with_path(PathMatch::prefix("/v1")), Some(2), 4),
        ];
        entries.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        let names: Vec<&str> = entries.iter().map(|e| e.route.name.as_str()).collect();
        assert_eq!(names, vec!["exact", "header", "v1-older", "v1", "root"]);
    }

    #[test]
    fn listeners_prefer_the_most_specific_hostname() {
        let listener = |name: &str, hostname: Option<&str>| ListenerRoutes {
            gateway: ObjectKey::new(Kind::Gateway, "default", "gw"),
            name: name.into(),
            hostname: hostname.map(Into::into),
            entries: vec![],
            routes_on_model: false,
        };
        let mut port = PortRoutes {
            listeners: vec![
                listener("any", None),
                listener("wild", Some("*.example.com")),
                listener("exact", Some("api.example.com")),
            ],
        };
        port.sort();
        let pick = |host| port.listener(host).map(|l| l.name.as_str());
        assert_eq!(pick(Some("api.example.com")), Some("exact"));
        assert_eq!(pick(Some("chat.example.com")), Some("wild"));
        assert_eq!(pick(Some("other.org")), Some("any"));
        assert_eq!(pick(None), Some("any"));
    }
}
