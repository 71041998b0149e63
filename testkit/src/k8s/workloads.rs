//! Core `v1` objects: Services and Pods as the gateway reads them. Shapes only; see [`super`].

use std::net::IpAddr;

use serde_json::{Value, json};

use super::{Meta, Object, pair, string_map};

/// A `v1` Service selecting pods by label.
#[derive(Debug, Clone)]
pub struct Service {
    meta: Meta,
    selector: Vec<(String, String)>,
    ports: Vec<(u16, u16)>,
}

impl Service {
    /// A Service without selector or ports yet.
    pub fn new(name: &str) -> Service {
        Service {
            meta: Meta::named(name),
            selector: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Select pods labelled `key: value`.
    pub fn selector(mut self, key: &str, value: &str) -> Service {
        self.selector.push(pair(key, value));
        self
    }

    /// Serve `port`, forwarding to the pods' `target_port`.
    pub fn port(mut self, port: u16, target_port: u16) -> Service {
        self.ports.push((port, target_port));
        self
    }
}

impl Object for Service {
    fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(port, target)| json!({"port": port, "targetPort": target}))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.meta.to_value(),
            "spec": {"selector": string_map(&self.selector), "ports": ports},
        })
    }
}

/// A `v1` Pod as the gateway sees one: labels, an address, and whether it is Ready.
#[derive(Debug, Clone)]
pub struct Pod {
    meta: Meta,
    ip: IpAddr,
    ready: bool,
    running: bool,
    container: Option<(String, String, u16)>,
}

impl Pod {
    /// A Ready pod at `ip`, without labels yet.
    pub fn new(name: &str, ip: IpAddr) -> Pod {
        Pod {
            meta: Meta::named(name),
            ip,
            ready: true,
            running: false,
            container: None,
        }
    }

    /// A running model-server pod `name` at `ip` labelled `app: qwen` (the selector of
    /// [`super::Manifest::qwen_pool`]), with its Ready condition `ready`.
    pub fn qwen(name: &str, ip: IpAddr, ready: bool) -> Pod {
        Pod::new(name, ip)
            .label("app", "qwen")
            .container("vllm", "vllm-sim", 8000)
            .running()
            .ready(ready)
    }

    /// In `namespace` (default: none, which the gateway reads as `default`).
    pub fn namespace(mut self, namespace: &str) -> Pod {
        self.meta.namespace = Some(namespace.to_owned());
        self
    }

    /// Label it `key: value`.
    pub fn label(mut self, key: &str, value: &str) -> Pod {
        self.meta.labels.push(pair(key, value));
        self
    }

    /// Its `Ready` condition: `True` or `False`.
    pub fn ready(mut self, ready: bool) -> Pod {
        self.ready = ready;
        self
    }

    /// `status.phase: Running`, as the API server reports a started pod.
    pub fn running(mut self) -> Pod {
        self.running = true;
        self
    }

    /// A container `name` of `image` with a port named `http` on `port`.
    pub fn container(mut self, name: &str, image: &str, port: u16) -> Pod {
        self.container = Some((name.to_owned(), image.to_owned(), port));
        self
    }
}

impl Object for Pod {
    fn to_value(&self) -> Value {
        let ready = if self.ready { "True" } else { "False" };
        let mut status = json!({
            "podIP": self.ip.to_string(),
            "conditions": [{"type": "Ready", "status": ready}],
        });
        if self.running {
            status["phase"] = json!("Running");
            // What a kubelet reports for a running container (and what `kubectl get pods` counts
            // in its READY column).
            if let Some((name, image, _)) = &self.container {
                status["containerStatuses"] = json!([{
                    "name": name,
                    "image": image,
                    "imageID": "",
                    "ready": self.ready,
                    "restartCount": 0,
                    "started": true,
                    "state": {"running": {}},
                }]);
            }
        }
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.meta.to_value(),
            "status": status,
        });
        if let Some((name, image, port)) = &self.container {
            pod["spec"] = json!({"containers": [{
                "name": name,
                "image": image,
                "ports": [{"name": "http", "containerPort": port}],
            }]});
        }
        pod
    }
}

/// Ready pods `{prefix}-0`, `{prefix}-1`, ... labelled `app: {app}`, one per address.
pub fn ready_pods(prefix: &str, app: &str, ips: impl IntoIterator<Item = IpAddr>) -> Vec<Pod> {
    ips.into_iter()
        .enumerate()
        .map(|(i, ip)| Pod::new(&format!("{prefix}-{i}"), ip).label("app", app))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{Manifest, documents, ip, yaml};

    #[test]
    fn pods_render_readiness_as_the_strings_kubernetes_uses() {
        let pods = ready_pods("sim", "sim", [ip(2), ip(3)]);
        let text = Manifest::new()
            .with_all(pods)
            .with(Pod::new("down", ip(9)).label("app", "sim").ready(false))
            .render();
        let docs = documents(&text);
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs[1],
            yaml(
                "apiVersion: v1
kind: Pod
metadata: {name: sim-1, labels: {app: sim}}
status: {podIP: 127.0.0.3, conditions: [{type: Ready, status: 'True'}]}"
            )
        );
        assert_eq!(
            docs[2]["status"]["conditions"][0]["status"],
            yaml("'False'"),
            "a string, not a YAML boolean: {text}"
        );
    }

    #[test]
    fn a_kube_pod_has_a_phase_a_container_and_a_namespace() {
        let pod = Pod::new("qwen-0", ip(5))
            .namespace("team-a")
            .label("app", "qwen")
            .running()
            .container("vllm", "vllm-sim", 8000);
        assert_eq!(
            documents(&pod.to_yaml()),
            vec![yaml(
                "apiVersion: v1
kind: Pod
metadata: {name: qwen-0, namespace: team-a, labels: {app: qwen}}
spec: {containers: [{name: vllm, image: vllm-sim, ports: [{name: http, containerPort: 8000}]}]}
status:
  phase: Running
  podIP: 127.0.0.5
  conditions: [{type: Ready, status: 'True'}]
  containerStatuses:
  - {name: vllm, image: vllm-sim, imageID: '', ready: true, restartCount: 0, started: true, state: {running: {}}}"
            )]
        );
    }

    #[test]
    fn a_service_selects_pods_and_forwards_its_port() {
        let service = Service::new("qwen").selector("app", "qwen").port(80, 8000);
        assert_eq!(
            documents(&service.to_yaml()),
            vec![yaml(
                "apiVersion: v1
kind: Service
metadata: {name: qwen}
spec: {selector: {app: qwen}, ports: [{port: 80, targetPort: 8000}]}"
            )]
        );
    }
}
