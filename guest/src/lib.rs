//! pyti-guest: the agent that runs a recipe inside the guest VM, and the types the host
//! shares with it.
//!
//! The host writes `job.json` ([`job`]) on the IO disk laid out as [`layout`] says, the
//! agent runs the recipe's tasks ([`agent`]) and writes `results/results.json`
//! ([`results`]). The host depends on this library for those types so the two sides
//! cannot drift; the agent binary is built statically from the same crate and baked
//! into the guest image.

pub mod agent;
pub mod behaviour;
pub mod cpu;
pub mod digest;
pub mod job;
pub mod layout;
pub mod outcome;
pub mod recipe;
pub mod results;
