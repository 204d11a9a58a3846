//! The process: starting and stopping a node with every edge it enables, the demo, and the
//! device simulator.

pub mod datadir;
pub mod demo;
pub mod drain;
pub mod handover;
pub mod logging;
pub mod notify;
pub mod process_metrics;
pub mod reload;
pub mod server;
pub mod signals;
pub mod simulate;
