//! An external endpoint picker a pool is routed by: the Service its `endpointPickerRef` names,
//! resolved to the Service's ready endpoints, with one lazily connected ext_proc client per
//! endpoint.
//!
//! The binding is rebuilt with every snapshot but its clients are kept while the Service's
//! endpoints and the client settings stay the same, so a rebuild does not drop the picker's
//! HTTP/2 connections. Clients are made on first use, on the request path's runtime (tonic's
//! channel needs one), never during a build. Nothing here talks to a picker.

use std::net::SocketAddr;
use std::sync::OnceLock;

use epp::{ClientSettings, PickerClient};

use super::backends::FailureMode;
use crate::config::ObjectKey;

/// The picker Service of a pool, resolved.
pub struct PickerBinding {
    /// The Service.
    pub service: ObjectKey,
    /// Its port.
    pub port: u16,
    /// Its ready endpoints (`podIP:targetPort`), sorted. The first is asked; the next ones when it
    /// cannot be reached.
    pub endpoints: Vec<SocketAddr>,
    /// What to do when no picker answers.
    pub failure_mode: FailureMode,
    settings: ClientSettings,
    clients: Vec<OnceLock<PickerClient>>,
}

impl std::fmt::Debug for PickerBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PickerBinding")
            .field("service", &self.service)
            .field("port", &self.port)
            .field("endpoints", &self.endpoints)
            .field("failure_mode", &self.failure_mode)
            .finish()
    }
}

impl PickerBinding {
    /// A binding to `endpoints` of Service `service` port `port`.
    pub fn new(
        service: ObjectKey,
        port: u16,
        endpoints: Vec<SocketAddr>,
        failure_mode: FailureMode,
        settings: ClientSettings,
    ) -> Self {
        let clients = endpoints.iter().map(|_| OnceLock::new()).collect();
        Self {
            service,
            port,
            endpoints,
            failure_mode,
            settings,
            clients,
        }
    }

    /// Whether `self` talks to the same endpoints with the same settings as `other` (so `other`'s
    /// clients can be kept).
    pub fn same_target(&self, other: &PickerBinding) -> bool {
        self.endpoints == other.endpoints && self.settings == other.settings
    }

    /// `self`, keeping the clients of `previous` (already connected) when both talk to the same
    /// target.
    pub fn reuse(self, previous: &PickerBinding) -> Self {
        if !self.same_target(previous) {
            return self;
        }
        let clients = previous
            .clients
            .iter()
            .map(|cell| {
                let copy = OnceLock::new();
                if let Some(client) = cell.get() {
                    let _ = copy.set(client.clone());
                }
                copy
            })
            .collect();
        Self { clients, ..self }
    }

    /// The clients in the order to ask them (the endpoints' order), each made on first use.
    pub fn clients(&self) -> impl Iterator<Item = (SocketAddr, &PickerClient)> {
        self.endpoints
            .iter()
            .zip(&self.clients)
            .map(|(address, cell)| {
                let client =
                    cell.get_or_init(|| PickerClient::for_addr(*address, self.settings.clone()));
                (*address, client)
            })
    }
}

/// What the pool's picker reference came to: a binding, or why requests get 500 (the reference
/// cannot be resolved, as the Inference Extension's conformance tests expect).
pub type PickerResolution = Result<std::sync::Arc<PickerBinding>, std::sync::Arc<str>>;
