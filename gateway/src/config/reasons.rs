//! What a [`super::ConfigIssue`] means to the status writer, typed: the Gateway API or Inference
//! Extension reason it is ([`IssueReason`]) and the part of its object it is about ([`Subject`]).
//!
//! The build sets both when it reports a problem; `kubernetes::status` reads them to choose each
//! condition's reason, so no code parses an issue's text or field path. Printing stays the
//! issue's business: these types only name things.

/// A configuration problem the Gateway API or the Inference Extension has a condition reason for.
///
/// An issue that has one prints it before its message (`NoMatchingParent: Gateway default/gw has
/// no such HTTP listener`), so operators see the reason the status carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueReason {
    /// A parentRef names one of our Gateways, but none of its HTTP listeners matches the
    /// parentRef's `sectionName` or `port` (HTTPRoute `Accepted`).
    NoMatchingParent,
    /// The listeners a parentRef matches all refuse the route: `allowedRoutes` or hostnames
    /// (HTTPRoute `Accepted`).
    NotAllowedByListeners,
    /// Two listeners serve the same port and hostname (listener `Conflicted`). Every served
    /// listener is HTTP, so a conflict is always one of hostnames.
    HostnameConflict,
    /// A listener's protocol is not HTTP (listener `Accepted`).
    UnsupportedProtocol,
    /// A listener's `allowedRoutes.kinds` leaves out HTTPRoute (listener `ResolvedRefs`).
    InvalidRouteKinds,
    /// A backendRef names another namespace, which needs a ReferenceGrant (HTTPRoute
    /// `ResolvedRefs`).
    RefNotPermitted,
    /// A backendRef names a kind that is neither a Service nor an InferencePool (HTTPRoute
    /// `ResolvedRefs`).
    InvalidKind,
    /// A backendRef names a Service or InferencePool that does not exist (HTTPRoute
    /// `ResolvedRefs`).
    BackendNotFound,
    /// An InferenceModel's `modelName` is already served by an older InferenceModel
    /// (InferenceModel `Accepted`).
    ModelNameInUse,
}

impl IssueReason {
    /// Every reason, for checks that must cover them all.
    pub const ALL: [IssueReason; 9] = [
        IssueReason::NoMatchingParent,
        IssueReason::NotAllowedByListeners,
        IssueReason::HostnameConflict,
        IssueReason::UnsupportedProtocol,
        IssueReason::InvalidRouteKinds,
        IssueReason::RefNotPermitted,
        IssueReason::InvalidKind,
        IssueReason::BackendNotFound,
        IssueReason::ModelNameInUse,
    ];

    /// The condition reason, as the specification spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            IssueReason::NoMatchingParent => "NoMatchingParent",
            IssueReason::NotAllowedByListeners => "NotAllowedByListeners",
            IssueReason::HostnameConflict => "HostnameConflict",
            IssueReason::UnsupportedProtocol => "UnsupportedProtocol",
            IssueReason::InvalidRouteKinds => "InvalidRouteKinds",
            IssueReason::RefNotPermitted => "RefNotPermitted",
            IssueReason::InvalidKind => "InvalidKind",
            IssueReason::BackendNotFound => "BackendNotFound",
            IssueReason::ModelNameInUse => "ModelNameInUse",
        }
    }

    /// How an issue's text names the reason: [`Self::as_str`], except that a hostname conflict
    /// prints as `Conflicted`, the condition it sets (as it always has).
    pub const fn label(self) -> &'static str {
        match self {
            IssueReason::HostnameConflict => "Conflicted",
            other => other.as_str(),
        }
    }
}

/// The part of its object an issue is about, as far as a status condition tells parts apart.
/// The issue's `field` path says the same for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subject {
    /// The object as a whole, or a part no condition singles out.
    #[default]
    Object,
    /// Listener `n` of a Gateway (`spec.listeners[n]`), other than its port.
    Listener(usize),
    /// The port of listener `n` (`spec.listeners[n].port`): out of range, or already served.
    ListenerPort(usize),
    /// parentRef `n` of an HTTPRoute (`spec.parentRefs[n]`).
    ParentRef(usize),
    /// Rule `n` of an HTTPRoute (`spec.rules[n]`): its matches, timeout or backend list.
    Rule(usize),
    /// The filters of rule `n` (`spec.rules[n].filters`), which the gateway does not support.
    RuleFilters(usize),
    /// backendRef `index` of rule `rule` (`spec.rules[rule].backendRefs[index]`).
    BackendRef {
        /// The rule.
        rule: usize,
        /// The backendRef within the rule.
        index: usize,
    },
}

impl Subject {
    /// The listener the issue is about, port included.
    pub fn listener(self) -> Option<usize> {
        match self {
            Subject::Listener(n) | Subject::ListenerPort(n) => Some(n),
            _ => None,
        }
    }

    /// The route rule the issue is about, its filters and backendRefs included.
    pub fn rule(self) -> Option<usize> {
        match self {
            Subject::Rule(n) | Subject::RuleFilters(n) | Subject::BackendRef { rule: n, .. } => {
                Some(n)
            }
            _ => None,
        }
    }
}
