//! pyti-guest: the agent that runs a recipe inside the guest VM, and the types the host
//! shares with it.
//!
//! The host writes `job.json` ([`job`]) on the IO disk, the agent runs the recipe's
//! tasks ([`runner`]) and writes `results/results.json` ([`results`]). The host depends
//! on this library for those types so the two sides cannot drift; the agent binary is
//! built statically from the same crate and baked into the guest image.

pub mod behaviour;
pub mod job;
pub mod outcome;
pub mod recipe;
pub mod results;
pub mod runner;
