//! Leader election on a `coordination.k8s.io/v1` Lease, so only one replica writes status.
//!
//! The algorithm is client-go's `leaderelection`: the holder renews `renewTime` every retry
//! period; another replica takes the Lease over when the record has not changed for
//! `leaseDurationSeconds` as measured by its *own* clock (so clock skew between nodes does not
//! matter); every write carries the `resourceVersion` it read, so of two replicas racing for an
//! expired Lease exactly one wins (the other gets `409 Conflict`). A holder that cannot renew for
//! two thirds of the duration stops writing before anyone else may start. On shutdown the holder
//! releases the Lease so a successor takes over at once.
//!
//! Routing never depends on the Lease: every replica serves traffic from its own snapshot.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use super::KubeError;

/// One replica's view of the election.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
    /// The last record seen of another holder, and when (by our clock) it last changed.
    observed: Option<(String, Option<MicroTime>, Instant)>,
    /// When we last renewed successfully.
    renewed: Option<Instant>,
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn duration_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl Elector {
    /// An elector for Lease `namespace/name` under `identity`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
            renewed: None,
        }
    }

    fn error(&self, source: kube::Error) -> KubeError {
        KubeError::Lease {
            lease: format!("{}/{}", self.namespace, self.name),
            source: Box::new(source),
        }
    }

    /// How often to try: a fifth of the duration, as client-go's 2 s of 15 s (rounded up).
    pub fn retry_period(&self) -> Duration {
        self.duration / 5
    }

    /// Acquire or renew once. `Ok(true)` while we hold the Lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds(self.duration)),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.renewed = Some(Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.error(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.identity {
            let record = (holder.clone(), spec.renew_time.clone());
            let changed = self
                .observed
                .as_ref()
                .is_none_or(|(h, r, _)| (h, r) != (&record.0, &record.1));
            if changed {
                self.observed = Some((record.0, record.1, Instant::now()));
            }
            let held_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.duration, Duration::from_secs);
            let expired = holder.is_empty()
                || self
                    .observed
                    .as_ref()
                    .is_some_and(|(_, _, at)| at.elapsed() >= held_for);
            if !expired {
                self.renewed = None;
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(micro_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(micro_now());
        spec.lease_duration_seconds = Some(duration_seconds(self.duration));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.renewed = Some(Instant::now());
                self.observed = None;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.renewed = None;
                Ok(false)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// Whether a holder whose renewal just failed may still act: only within two thirds of the
    /// duration after its last renewal, so it stops before a successor can start.
    fn still_leading(&self) -> bool {
        self.renewed
            .is_some_and(|at| at.elapsed() < self.duration * 2 / 3)
    }

    /// Give the Lease up if we hold it (on shutdown).
    pub async fn release(&mut self) -> Result<(), KubeError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(micro_now());
        spec.lease_duration_seconds = Some(1);
        self.renewed = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    /// Run the election, publishing whether we lead, until `stop` turns true; then release the
    /// Lease if we hold it.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.retry_period());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => {
                    leading.send_replace(false);
                    if let Err(error) = self.release().await {
                        tracing::warn!(target: "kube", %error, "releasing the Lease failed; it expires by itself");
                    }
                    return;
                }
            }
            let now_leading = match self.try_acquire_or_renew().await {
                Ok(leading) => leading,
                Err(error) => {
                    let still = self.still_leading();
                    tracing::warn!(target: "kube", %error, still_leading = still, "Lease renewal failed");
                    still
                }
            };
            let changed = leading.send_if_modified(|current| {
                let changed = *current != now_leading;
                *current = now_leading;
                changed
            });
            if changed {
                if now_leading {
                    tracing::info!(target: "kube", identity = %self.identity, lease = %format!("{}/{}", self.namespace, self.name), "acquired the Lease: this replica writes status");
                } else {
                    tracing::info!(target: "kube", identity = %self.identity, "lost the Lease: another replica writes status");
                }
            }
        }
    }
}
