//! Configuration problems, reported with the object, the field, the value and the reason.
//!
//! Loading and building never stop at the first problem: they collect every [`ConfigIssue`] so
//! `--validate` can print them all at once. An [`Severity::Error`] makes a configuration unusable
//! (the gateway refuses to start on it, and a reload keeps the previous snapshot); a
//! [`Severity::Warning`] is served the way the Gateway API prescribes (for example a missing
//! backend answers 500) and is logged.
//!
//! An issue the Gateway API or the Inference Extension has a condition reason for carries it
//! typed ([`IssueReason`]), with the part of the object it is about ([`Subject`]); its printed
//! text names the reason first, so what operators read and what the status says agree.

use std::fmt;
use std::path::PathBuf;

use super::reasons::{IssueReason, Subject};

/// How bad an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Served as the Gateway API prescribes, but probably not what was meant.
    Warning,
    /// The configuration cannot be used.
    Error,
}

/// Where a document came from: a file and the document's 1-based position in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.file.display(), self.document)
    }
}

/// One problem in the configuration.
///
/// It prints (and serializes) as `severity: object (origin): field = "value": reason`, where the
/// reason is the [`IssueReason`], if any, followed by the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Error or warning.
    pub severity: Severity,
    /// The object, as `Kind namespace/name` (or `document` when it has no identity yet).
    pub object: String,
    /// Where the object was defined, when it came from a file.
    pub origin: Option<Origin>,
    /// The field path, for example `spec.rules[0].backendRefs[1].weight`.
    pub field: String,
    /// The offending value, rendered as text.
    pub value: String,
    /// The condition reason the problem is, when the specification has one.
    pub reason: Option<IssueReason>,
    /// The part of the object the problem is about, for the status writer.
    pub subject: Subject,
    /// Why it is a problem, in words (after the reason, when there is one).
    pub message: String,
}

impl ConfigIssue {
    /// An error, without a condition reason, about the object as a whole.
    pub fn error(
        object: impl Into<String>,
        field: impl Into<String>,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Error,
            object: object.into(),
            origin: None,
            field: field.into(),
            value: value.to_string(),
            reason: None,
            subject: Subject::Object,
            message: message.into(),
        }
    }

    /// A warning, without a condition reason, about the object as a whole.
    pub fn warning(
        object: impl Into<String>,
        field: impl Into<String>,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(object, field, value, message)
        }
    }

    /// The same issue, located at `origin`.
    pub fn at(mut self, origin: Option<&Origin>) -> Self {
        self.origin = origin.cloned();
        self
    }

    /// The same issue, being the condition reason `reason`.
    pub fn because(mut self, reason: impl Into<Option<IssueReason>>) -> Self {
        self.reason = reason.into();
        self
    }

    /// The same issue, about `subject`.
    pub fn about(mut self, subject: Subject) -> Self {
        self.subject = subject;
        self
    }

    /// The reason and the message, as printed after the field: `BackendNotFound: Service
    /// default/s does not exist`, or the message alone.
    pub fn explanation(&self) -> String {
        match self.reason {
            Some(reason) => format!("{}: {}", reason.label(), self.message),
            None => self.message.clone(),
        }
    }
}

/// The issue as JSON, with the printed reason: `{severity, object, origin?, field, value, reason}`.
impl serde::Serialize for ConfigIssue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Printed<'a> {
            severity: Severity,
            object: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            origin: Option<&'a Origin>,
            field: &'a str,
            value: &'a str,
            reason: String,
        }
        Printed {
            severity: self.severity,
            object: &self.object,
            origin: self.origin.as_ref(),
            field: &self.field,
            value: &self.value,
            reason: self.explanation(),
        }
        .serialize(serializer)
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}", self.object)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        write!(f, ": {}", self.field)?;
        if !self.value.is_empty() {
            write!(f, " = {:?}", self.value)?;
        }
        write!(f, ": ")?;
        if let Some(reason) = self.reason {
            write!(f, "{}: ", reason.label())?;
        }
        f.write_str(&self.message)
    }
}

/// Whether any issue is an error.
pub fn has_errors(issues: &[ConfigIssue]) -> bool {
    issues.iter().any(|i| i.severity == Severity::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_object_origin_field_value_and_reason() {
        let origin = Origin {
            file: "routes.yaml".into(),
            document: 3,
        };
        let issue = ConfigIssue::error(
            "HTTPRoute default/chat",
            "spec.rules[0].backendRefs[0].weight",
            -1,
            "must be between 0 and 1000000",
        )
        .at(Some(&origin));
        assert_eq!(
            issue.to_string(),
            "error: HTTPRoute default/chat (routes.yaml, document 3): \
             spec.rules[0].backendRefs[0].weight = \"-1\": must be between 0 and 1000000"
        );
    }

    #[test]
    fn a_reason_prints_before_the_message_as_it_always_has() {
        let origin = Origin {
            file: "routes.yaml".into(),
            document: 2,
        };
        let issue = ConfigIssue::warning(
            "HTTPRoute default/chat",
            "spec.parentRefs[1]",
            "nope",
            "Gateway default/gw has no such HTTP listener",
        )
        .because(IssueReason::NoMatchingParent)
        .about(Subject::ParentRef(1))
        .at(Some(&origin));
        let printed = "warning: HTTPRoute default/chat (routes.yaml, document 2): \
                       spec.parentRefs[1] = \"nope\": NoMatchingParent: Gateway default/gw has no such HTTP listener";
        assert_eq!(issue.to_string(), printed);
        assert_eq!(
            issue.explanation(),
            "NoMatchingParent: Gateway default/gw has no such HTTP listener"
        );
        assert_eq!(
            serde_json::to_value(&issue).unwrap(),
            serde_json::json!({
                "severity": "warning",
                "object": "HTTPRoute default/chat",
                "origin": {"file": "routes.yaml", "document": 2},
                "field": "spec.parentRefs[1]",
                "value": "nope",
                "reason": "NoMatchingParent: Gateway default/gw has no such HTTP listener",
            })
        );

        // A hostname conflict prints as the condition it sets.
        let conflict = ConfigIssue::error(
            "Gateway default/gw",
            "spec.listeners[1].port",
            8080,
            "listener a of Gateway default/gw already serves this port and hostname",
        )
        .because(IssueReason::HostnameConflict);
        assert_eq!(
            conflict.to_string(),
            "error: Gateway default/gw: spec.listeners[1].port = \"8080\": Conflicted: \
             listener a of Gateway default/gw already serves this port and hostname"
        );
        assert_eq!(IssueReason::HostnameConflict.as_str(), "HostnameConflict");
    }
}
