//! `flowex`: the node agent's command line.
//!
//! The agent itself (conntrack and NFLOG sources, connection store, exporting process) is
//! not built yet; until it is, this binary only reports its version and says so plainly
//! instead of pretending to export anything.

use std::process::ExitCode;

use clap::Parser;

/// flowex: an IPFIX flow exporter for Kubernetes nodes.
///
/// Not yet functional: the agent (`flowex run`) is under construction. Today the
/// workspace ships the IPFIX wire crate (flowex-ipfix) and the collector-sim and
/// ipfix-send tools; see README.md.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "flowex {}: the agent is not implemented yet; nothing is exported. See README.md.",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
