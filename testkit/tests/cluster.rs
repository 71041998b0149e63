//! The test cluster itself: etcd and kube-apiserver start, the CRDs are installed and enforced,
//! RBAC refuses a ServiceAccount what no role grants, and stopping the API server keeps etcd's
//! data.

use testkit::cluster::TestCluster;

#[tokio::test]
async fn the_cluster_serves_crds_enforces_their_schemas_and_rbac() {
    let mut cluster = TestCluster::start().await;
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"]).await;
    for crd in [
        "inferencepools.inference.networking.k8s.io",
        "inferencepools.inference.networking.x-k8s.io",
        "inferencemodels.inference.networking.x-k8s.io",
        "httproutes.gateway.networking.k8s.io",
    ] {
        assert!(crds.contains(crd), "{crd} installed: {crds}");
    }

    // The schema is the API server's to enforce: a v1 pool without targetPorts is refused.
    let invalid = "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: bad, namespace: default}\nspec: {selector: {matchLabels: {app: x}}, endpointPickerRef: {name: epp, port: {number: 9002}}}\n";
    let refused = cluster
        .kubectl_with_input(&["apply", "-f", "-"], Some(invalid))
        .await
        .expect_err("the schema refuses a pool without targetPorts");
    assert!(refused.contains("targetPorts"), "{refused}");

    // A ServiceAccount with no binding may not even list pods.
    cluster
        .apply(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: nobody, namespace: default}\n",
        )
        .await;
    let token = cluster.token("default", "nobody").await;
    let kubeconfig = cluster.token_kubeconfig(cluster.dir(), &token, "default");
    let output = std::process::Command::new(testkit::cluster::binaries().join("kubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "pods"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("Forbidden"),
        "{stderr}"
    );
    let denied = cluster.audit().into_iter().any(|event| {
        event["user"]["username"] == "system:serviceaccount:default:nobody"
            && event["responseStatus"]["code"] == 403
    });
    assert!(denied, "the audit log records the refusal");

    // A restarted API server finds its objects in etcd.
    let before = cluster.etcd_revision().await;
    cluster.stop_apiserver().await;
    cluster.start_apiserver().await;
    assert!(
        cluster
            .get("serviceaccount", "default", "nobody")
            .await
            .is_some()
    );
    assert!(cluster.compact().await >= before);
}
