//! A rule's `matches` to [`RouteMatch`]es: paths (prefix, exact, regular expression), methods,
//! headers and query parameters, checked against the Gateway API's rules.
//!
//! An invalid match is an error and drops its whole rule; nothing here decides where a match
//! sends traffic.

use gateway_api::httproutes::{
    HttpRoute, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParams, HttpRouteRulesMatchesQueryParamsType,
};
use http::{HeaderName, Method};

use super::index::Located;
use crate::config::{ConfigIssue, Subject};
use crate::snapshot::routes::{PathMatch, RouteMatch, ValueMatch, full_match_regex};

/// The matches of rule `rule`; `None` (with the errors reported) when one is invalid. A rule
/// without matches matches every request.
pub(super) fn rule_matches(
    matches: Option<&[HttpRouteRulesMatches]>,
    route: &Located<'_, HttpRoute>,
    rule: usize,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Vec<RouteMatch>> {
    let Some(matches) = matches.filter(|m| !m.is_empty()) else {
        return Some(vec![RouteMatch::any()]);
    };
    let before = issues.len();
    let mut out = Vec::with_capacity(matches.len());
    for (index, m) in matches.iter().enumerate() {
        let at = MatchAt { route, rule, index };
        out.extend(at.route_match(m, issues));
    }
    (issues.len() == before).then_some(out)
}

/// Match `index` of rule `rule` of a route.
struct MatchAt<'r, 'a> {
    route: &'r Located<'a, HttpRoute>,
    rule: usize,
    index: usize,
}

impl MatchAt<'_, '_> {
    /// An error at `rest` below this match.
    fn error(&self, rest: &str, value: &str, message: impl Into<String>) -> ConfigIssue {
        self.route
            .error(
                format!("spec.rules[{}].matches[{}]{rest}", self.rule, self.index),
                value,
                message,
            )
            .about(Subject::Rule(self.rule))
    }

    /// The match; an invalid path leaves the rest of it unchecked.
    fn route_match(
        &self,
        m: &HttpRouteRulesMatches,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<RouteMatch> {
        let path = self.path(m.path.as_ref(), issues)?;
        let method = m.method.as_ref().map(|method| {
            let text = serde_json::to_value(method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            Method::from_bytes(text.as_bytes()).unwrap_or(Method::GET)
        });
        let headers = m
            .headers
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(h, header)| self.header(h, header, issues))
            .collect();
        let query = m
            .query_params
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(q, param)| self.query_param(q, param, issues))
            .collect();
        Some(RouteMatch {
            path,
            method,
            headers,
            query,
        })
    }

    fn path(
        &self,
        path: Option<&HttpRouteRulesMatchesPath>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<PathMatch> {
        let value = path
            .and_then(|p| p.value.clone())
            .unwrap_or_else(|| "/".into());
        let kind = path
            .and_then(|p| p.r#type.clone())
            .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix);
        let checked = match kind {
            HttpRouteRulesMatchesPathType::RegularExpression => full_match_regex(&value)
                .map(PathMatch::Regex)
                .map_err(|e| format!("invalid regular expression: {e}")),
            kind => validate_path(&value)
                .map(|()| match kind {
                    HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value.clone()),
                    _ => PathMatch::prefix(&value),
                })
                .map_err(str::to_owned),
        };
        checked
            .map_err(|reason| issues.push(self.error(".path.value", &value, reason)))
            .ok()
    }

    fn header(
        &self,
        h: usize,
        header: &HttpRouteRulesMatchesHeaders,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<(HeaderName, ValueMatch)> {
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            issues.push(self.error(
                &format!(".headers[{h}].name"),
                &header.name,
                "not a valid header name",
            ));
            return None;
        };
        let regex = matches!(
            header.r#type,
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
        );
        let field = format!(".headers[{h}].value");
        let value = self.value(regex, &field, &header.value, issues)?;
        Some((name, value))
    }

    fn query_param(
        &self,
        q: usize,
        param: &HttpRouteRulesMatchesQueryParams,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<(String, ValueMatch)> {
        let regex = matches!(
            param.r#type,
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
        );
        let field = format!(".queryParams[{q}].value");
        let value = self.value(regex, &field, &param.value, issues)?;
        Some((param.name.clone(), value))
    }

    /// An exact or regular-expression value match at `rest`.
    fn value(
        &self,
        regex: bool,
        rest: &str,
        value: &str,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<ValueMatch> {
        if !regex {
            return Some(ValueMatch::Exact(value.to_owned()));
        }
        match full_match_regex(value) {
            Ok(regex) => Some(ValueMatch::Regex(regex)),
            Err(e) => {
                issues.push(self.error(rest, value, format!("invalid regular expression: {e}")));
                None
            }
        }
    }
}

/// The Gateway API's path value rules.
fn validate_path(value: &str) -> Result<(), &'static str> {
    if !value.starts_with('/') {
        return Err("must start with /");
    }
    let forbidden = ["//", "/./", "/../", "%2f", "%2F", "#"];
    if forbidden.iter().any(|f| value.contains(f))
        || value.ends_with("/..")
        || value.ends_with("/.")
    {
        return Err("must not contain //, /./, /../, %2f, %2F or #, nor end with /. or /..");
    }
    if value.len() > 1024 {
        return Err("must be at most 1024 characters");
    }
    Ok(())
}
