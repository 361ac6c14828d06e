//! Ladder: a self-hosted smart LLM router.
//!
//! A request enters through [`server`] (the OpenAI-compatible HTTP API), is scored by the
//! [`classifier`] (a Candle sentence encoder plus small heads), turned into a routing
//! [`router::Decision`] (the cheapest catalogue model likely to succeed, and a quality-first
//! fallback chain above it), executed by the [`executor`] against upstream [`providers`], and
//! recorded by the [`store`]. [`training`] fits the classifier heads from seed data and logged
//! outcomes. [`config`] holds the typed, validated catalogue everything else reads.

pub mod analytics;
pub mod auth;
pub mod classifier;
pub mod config;
pub mod demo;
pub mod error;
pub mod executor;
pub mod fake_provider;
pub mod providers;
pub mod router;
pub mod server;
pub mod store;
pub mod task;
pub mod training;
pub mod wire;
