//! End-to-end tests: they start the real `vigil` binary on a free loopback port and
//! talk to it as users do (HTTP line protocol, the SQL API, the CLI).
#![allow(unreachable_pub)]

mod server;

mod alerts;
mod clients;
mod crash;
mod errors;
mod hostile;
mod kafka;
mod ring;
mod roundtrip;
mod scrape;
mod tiers;
mod udp;
