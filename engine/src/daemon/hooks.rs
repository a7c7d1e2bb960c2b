//! The daemon's test and benchmark hooks: the load generator ([`super::load`]) and the
//! delivery log ([`super::delivery_log`]). They exist only in a build with the cargo
//! feature `test-hooks` (the engine's own tests and `make bench-engine` turn it on);
//! the default `ringcastd` has [`TestHooks`] as an empty type whose methods do nothing,
//! and its configuration refuses the settings that would turn them on.
//!
//! The engine calls the hooks at fixed points of its loop; they never decide anything
//! the protocol does. Messages reach the load checker because their service id
//! (`ringcast_proto::service`) names the load generator, never by their contents.

use crate::host::Host;
use crate::io::stats::StatsWriter;
use crate::totem::{ConfigurationChange, Delivery, Instant};

use super::DaemonConfig;

/// Why the hooks could not start.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct HookError {
    pub what: String,
    pub source: std::io::Error,
}

#[cfg(feature = "test-hooks")]
pub use enabled::TestHooks;

#[cfg(not(feature = "test-hooks"))]
pub use disabled::TestHooks;

#[cfg(not(feature = "test-hooks"))]
mod disabled {
    use super::*;

    /// No hooks in this build.
    #[derive(Debug, Default)]
    pub struct TestHooks;

    impl TestHooks {
        pub fn new(_config: &DaemonConfig, _epoch: u64) -> Result<TestHooks, HookError> {
            Ok(TestHooks)
        }
        pub fn generate_load(
            &mut self,
            _host: &mut Host,
            _now: Instant,
            _stats: &StatsWriter,
        ) -> usize {
            0
        }
        pub fn stop_load(&mut self) {}
        pub fn on_configuration(&mut self, _now: Instant, _change: &ConfigurationChange) {}
        pub fn on_generated(&mut self, _now: Instant, _delivery: &Delivery, _stats: &StatsWriter) {
            tracing::debug!("load generator message dropped: built without test-hooks");
        }
        pub fn tick(&mut self, _now: Instant) {}
        pub fn flush(&mut self, _now: Instant) {}
        pub fn next_deadline(&self, _now: Instant) -> Option<Instant> {
            None
        }
    }
}

#[cfg(feature = "test-hooks")]
mod enabled {
    use super::*;
    use crate::daemon::delivery_log::DeliveryLog;
    use crate::daemon::load::{Check, LoadChecker, LoadGenerator};
    use crate::io::stats::Counter;
    use crate::service::ServiceId;
    use crate::totem::{Guarantee, NodeState, SubmitError};

    /// Most messages the load generator submits per loop iteration.
    const LOAD_BATCH: usize = 256;

    /// Writes to the delivery log; a failed write closes it (logged once).
    fn log(
        slot: &mut Option<DeliveryLog>,
        write: impl FnOnce(&mut DeliveryLog) -> std::io::Result<()>,
    ) {
        if let Some(log) = slot {
            if let Err(error) = write(log) {
                tracing::error!(path = %log.path().display(), %error, "delivery log failed; no longer written");
                *slot = None;
            }
        }
    }

    /// The load generator, its checker and the delivery log, each on when configured.
    #[derive(Debug)]
    pub struct TestHooks {
        load: Option<LoadGenerator>,
        load_started: bool,
        checker: LoadChecker,
        delivery_log: Option<DeliveryLog>,
    }

    impl TestHooks {
        /// `epoch` tells this start's generated messages from an earlier start's.
        pub fn new(config: &DaemonConfig, epoch: u64) -> Result<TestHooks, HookError> {
            let s = &config.settings;
            let load = LoadGenerator::new(&s.load, config.node_id, epoch);
            let delivery_log = match &s.delivery_log {
                None => None,
                Some(path) => {
                    let log = DeliveryLog::open(path, config.node_id, epoch, Instant::ZERO)
                        .map_err(|source| HookError {
                            what: format!("delivery_log {}", path.display()),
                            source,
                        })?;
                    tracing::warn!(path = %path.display(), "delivery log on (a test feature)");
                    Some(log)
                }
            };
            if load.is_some() {
                tracing::info!(
                    size_bytes = s.load.size_bytes,
                    rate_per_s = s.load.rate_per_s,
                    count = s.load.count,
                    "load generator on"
                );
            }
            Ok(TestHooks {
                load,
                load_started: false,
                checker: LoadChecker::default(),
                delivery_log,
            })
        }

        fn log(&mut self, write: impl FnOnce(&mut DeliveryLog) -> std::io::Result<()>) {
            log(&mut self.delivery_log, write);
        }

        /// Submits the generated messages due at `now` (once the node is operational).
        pub fn generate_load(
            &mut self,
            host: &mut Host,
            now: Instant,
            stats: &StatsWriter,
        ) -> usize {
            let Some(load) = &mut self.load else {
                return 0;
            };
            if !self.load_started {
                if host.state() != NodeState::Operational {
                    return 0;
                }
                self.load_started = true;
            }
            let mut submitted = 0;
            while submitted < LOAD_BATCH {
                let Some(message) = load.next(now) else {
                    break;
                };
                match host.submit_foreign(now, message.clone(), Guarantee::Agreed) {
                    Ok(()) => {
                        submitted += 1;
                        log(&mut self.delivery_log, |log| log.submitted(now, &message));
                    }
                    Err(SubmitError::TryAgain) => {
                        stats.add(Counter::SubmitTryAgain, 1);
                        load.refused(message);
                        break;
                    }
                    Err(e @ SubmitError::TooBig { .. }) => {
                        tracing::error!(error = %e, "load generator disabled");
                        self.load = None;
                        break;
                    }
                }
            }
            stats.add(Counter::LoadSubmitted, submitted as u64);
            submitted
        }

        /// Stops generating (SIGUSR2: tests and benchmarks end their load phase
        /// without stopping engines).
        pub fn stop_load(&mut self) {
            if let Some(load) = self.load.take() {
                tracing::info!(generated = load.generated(), "load generator stopped");
            }
        }

        /// Logs a configuration change (deliveries are logged by `on_generated`).
        pub fn on_configuration(&mut self, now: Instant, change: &ConfigurationChange) {
            self.log(|log| log.configuration(now, change));
        }

        /// A delivery of the load generator's service: logged and checked.
        pub fn on_generated(&mut self, now: Instant, delivery: &Delivery, stats: &StatsWriter) {
            debug_assert_eq!(
                ServiceId::of(&delivery.payload),
                Some(ServiceId::LoadGenerator)
            );
            self.log(|log| log.delivered(now, delivery));
            let bytes = delivery.payload.len() as u64;
            match self.checker.check(&delivery.payload) {
                Check::Malformed | Check::Untracked => {}
                Check::InOrder => {
                    stats.add(Counter::LoadDelivered, 1);
                    stats.add(Counter::LoadDeliveredBytes, bytes);
                }
                Check::Gap { missing } => {
                    stats.add(Counter::LoadDelivered, 1);
                    stats.add(Counter::LoadDeliveredBytes, bytes);
                    stats.add(Counter::LoadGaps, missing);
                }
                Check::OutOfOrder => {
                    stats.add(Counter::LoadOutOfOrder, 1);
                    tracing::error!(
                        sender = delivery.sender,
                        "generated message delivered out of order or twice"
                    );
                }
            }
        }

        /// Writes the delivery log's buffered records when they are due.
        pub fn tick(&mut self, now: Instant) {
            self.log(|log| log.tick(now));
        }

        /// Writes every buffered record (on exit).
        pub fn flush(&mut self, now: Instant) {
            self.log(|log| log.flush(now));
        }

        /// The earliest time a hook has work: the next generated message or log flush.
        pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
            let load = self.load.as_ref().and_then(|l| l.next_deadline(now));
            let log = self.delivery_log.as_ref().and_then(DeliveryLog::next_flush);
            load.into_iter().chain(log).min()
        }
    }
}
