//! The one kube-source behaviour the real API server cannot be made to show on cue, against the
//! fake API server (`fake_apiserver/`: real HTTP list/watch, bookmarks, status subresources and
//! resourceVersion preconditions): another controller's status write landing between the
//! gateway's read of an object and its status patch. The fake applies the foreign write just
//! before the gateway's next patch, so the `409 Conflict` and the recomputed write happen every
//! run; a real API server gives no hook for that interleaving.
//!
//! Everything else the kube source does is tested against a real etcd and kube-apiserver with
//! real RBAC, in `kube_cluster.rs` and `kube_cluster_status.rs`.

mod fake_apiserver;
mod kube_support;

use fake_apiserver::FakeApiServer;
use kube_support::KubeGateway;
use serde_json::Value;
use testkit::k8s::{Manifest, Object, Pod};
use testkit::*;

const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";

/// The condition `type` of a status conditions list.
fn condition<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#}"))
}

/// `(status, reason)` of a condition.
fn state(conditions: &Value, type_: &str) -> (String, String) {
    let c = condition(conditions, type_);
    (
        c["status"].as_str().unwrap().to_owned(),
        c["reason"].as_str().unwrap().to_owned(),
    )
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

/// The `parents[]` entries of an HTTPRoute's status, as (controllerName, sectionName or name).
fn route_parents(route: &Value) -> Vec<(String, String)> {
    route["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let parent = &p["parentRef"];
            let section = parent["sectionName"]
                .as_str()
                .or(parent["name"].as_str())
                .unwrap_or_default();
            (
                p["controllerName"].as_str().unwrap_or_default().to_owned(),
                section.to_owned(),
            )
        })
        .collect()
}

const OURS: &str = "inference-gateway.dev/controller";

#[tokio::test]
async fn a_status_write_racing_another_controller_is_refused_and_redone_keeping_its_entry() {
    let (port, backends) = start_backends(110, 1).await;
    let api = FakeApiServer::start_new().await;
    api.apply(&Manifest::qwen_pool(free_port(), free_port(), port).render());
    api.apply(&Pod::qwen("qwen-0", backends[0].addr.ip(), true).to_yaml());
    let dir = KubeGateway::scratch();
    let kubeconfig = api.kubeconfig(&dir);
    let gateway = KubeGateway::launch(&kubeconfig, dir, "replica-a", true, &[]).await;
    let route = || {
        api.get(GATEWAY_V1, "HTTPRoute", "default", "llm-route")
            .unwrap()
    };
    wait_until("the route's status is written", DEADLINE, || async {
        route_parents(&route()) == vec![(OURS.to_owned(), "llm".to_owned())]
    })
    .await;

    // Another controller adds its entry between our store's view of the route and our write: the
    // write computed from the older view must not drop it.
    api.race_next_status_patch(GATEWAY_V1, "HTTPRoute", "default", "llm-route", |route| {
        route["status"]["parents"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "theirs"},
                "controllerName": "example.com/other",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            }));
    });
    // A spec change makes the gateway rewrite the route's status: a second parentRef of ours.
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/llm-route/status";
    let route_writes = || -> Vec<_> {
        api.status_writes()
            .into_iter()
            .filter(|w| w.path == path)
            .collect()
    };
    let before = route_writes().len();
    let mut changed = route();
    changed["spec"]["parentRefs"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "gw", "sectionName": "missing"}));
    api.apply(&serde_yaml::to_string(&changed).unwrap());

    let expected = vec![
        ("example.com/other".to_owned(), "theirs".to_owned()),
        (OURS.to_owned(), "llm".to_owned()),
        (OURS.to_owned(), "missing".to_owned()),
    ];
    wait_until(
        "the status is recomputed and both controllers' entries are kept",
        DEADLINE,
        || async {
            let mut parents = route_parents(&route());
            parents.sort();
            !api.race_pending() && parents == expected
        },
    )
    .await;
    assert_eq!(
        api.conflicts(),
        vec![path.to_owned()],
        "the racing write was refused once, and the refused version was not sent again"
    );
    let versions: Vec<u64> = route_writes()
        .iter()
        .map(|w| {
            w.body["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_else(|| panic!("a status write without a precondition: {:#}", w.body))
                .parse()
                .unwrap()
        })
        .collect();
    let after = &versions[before..];
    assert!(
        after.len() >= 2 && after.last() > after.first(),
        "the refused write is redone from the newer version: {after:?}"
    );
    let missing = route()["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["parentRef"]["sectionName"] == "missing")
        .unwrap()
        .clone();
    assert_eq!(
        state(&missing["conditions"], "Accepted"),
        pair("False", "NoMatchingParent")
    );
    drop(gateway);
}
