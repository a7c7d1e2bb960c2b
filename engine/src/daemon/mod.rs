//! What the `ringcastd` daemon needs around the protocol and the event loop: its
//! configuration (TOML file, command-line overrides, built-in defaults), the persistent
//! ring sequence, the internal load generator and the delivery log (a test feature).
//!
//! No protocol logic lives here: everything Totem decides is in [`crate::totem`], and all
//! IO (and all `unsafe`) is in [`crate::io`].

pub mod config;
#[cfg(feature = "test-hooks")]
pub mod delivery_log;
pub mod hooks;
pub mod keyfile;
#[cfg(feature = "test-hooks")]
pub mod load;
pub mod ringseq;

pub use config::{DaemonConfig, IdleStrategy, NodeEntry, SettingError, Transport};
pub use ringseq::{FileRingSeqStore, RingSeqWriteError};
