//! `prfl demo`: the whole method end to end on the built-in procedural world
//! ([`crate::synthetic`]), on the CPU, with no downloads: pre-train a small Wan-architecture
//! generator with flow matching, cut and train the latent reward model (PAVRM) from it, fine-tune
//! the generator with PRFL, and measure fresh samples before and after with the world's rule
//! (never with the reward model). Early rejection (score candidates part-way through sampling,
//! finish only the best) is compared against sampling everything to the end.
//!
//! - [`config`]: the settings (full and quick).
//! - [`pipeline`]: the phases in order; [`generator`], [`reward`], [`finetune`], [`rejection`]:
//!   one phase each; [`world`]: sample sets and the rule-measured quality; [`stats`]: intervals.
//! - [`results`]: what a run measured; [`report`]: the summary table and files, with [`svg`]
//!   plots and [`gif`] previews.
//! - [`observer`]: progress reporting, drawn by the command-line tool.

pub mod config;
pub mod finetune;
pub mod generator;
pub mod gif;
pub mod init;
pub mod observer;
pub mod pipeline;
pub mod rejection;
pub mod report;
pub mod results;
pub mod reward;
pub mod stats;
pub mod svg;
pub mod world;

pub use config::DemoConfig;
pub use observer::{Observer, Silent};
pub use pipeline::run;
pub use results::DemoResults;
