//! Status conditions and JSON merge patches, the two primitives of status writing.
//!
//! A condition keeps its `lastTransitionTime` while its `status` stays the same (as apimachinery's
//! `meta.SetStatusCondition` does), so recomputing an unchanged status yields exactly the status
//! already stored and nothing is written. [`merge_patch`] is RFC 7386, the semantics of
//! `application/merge-patch+json`: lists are replaced whole, `null` deletes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

/// A desired condition, before its transition time is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `Accepted`, `Programmed`, `ResolvedRefs`, ...
    pub type_: &'static str,
    /// Whether the condition holds.
    pub status: bool,
    /// The reason, one of the API's constants.
    pub reason: &'static str,
    /// A human-readable message.
    pub message: String,
}

impl Desired {
    /// A condition that holds.
    pub fn ok(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn fail(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The longest message the Condition schema allows.
const MAX_MESSAGE: usize = 32768;

/// Turn desired conditions into `Condition`s, keeping the transition time of every condition
/// whose status did not change in `existing`.
pub fn conditions(
    desired: Vec<Desired>,
    existing: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let previous = existing.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = previous
                .filter(|c| c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            let mut message = d.message;
            if message.len() > MAX_MESSAGE {
                let mut end = MAX_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The current time as a Condition timestamp (whole seconds, as the API server stores it).
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Apply an RFC 7386 JSON merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else {
        unreachable!("target was just made an object")
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transition_time_moves_only_with_status() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let first = conditions(
            vec![Desired::ok("Accepted", "Accepted", "fine")],
            &[],
            Some(1),
            &t0,
        );
        assert_eq!(first[0].last_transition_time, t0);
        let same = conditions(
            vec![Desired::ok("Accepted", "Accepted", "still fine")],
            &first,
            Some(2),
            &t1,
        );
        assert_eq!(same[0].last_transition_time, t0);
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = conditions(
            vec![Desired::fail("Accepted", "NoMatchingParent", "gone")],
            &same,
            Some(2),
            &t1,
        );
        assert_eq!(flipped[0].last_transition_time, t1);
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "list": [3], "new": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "list": [3], "new": {"x": 1}})
        );
    }
}
