//! rosterdrop: bulk user and organization provisioning from roster files dropped in S3.
//!
//! The three stages (`ingest`, `apply`, `finalize`) are plain async functions over the `ports`;
//! the Lambdas in `functions/` and the local runner in `local` call the same functions.

pub mod adapters;
pub mod address;
pub mod apply;
#[cfg(test)]
mod architecture_tests;
pub mod changes;
mod chunk_read;
pub mod config;
pub mod delivery;
pub mod error;
pub mod event;
pub mod events;
pub mod fields;
pub mod finalize;
pub mod holds;
pub mod identity;
pub mod ingest;
pub mod invites;
pub mod keys;
pub mod layout;
#[cfg(feature = "local")]
pub mod local;
pub mod model;
pub mod monitor;
pub mod nfc;
pub mod ports;
pub mod report;
pub mod route;
mod row_line;
pub mod rules;
pub mod schedule;
pub mod services;
pub mod template;
#[cfg(test)]
pub mod testkit;
pub mod undo;
pub mod wire;
pub mod wording;

pub use config::Config;
pub use error::{Error, Result};
pub use services::Services;
