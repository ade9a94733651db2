//! `mlep-operator`: runs the operator, or `mlep-operator crd [DIR]` writes the CRDs. Options
//! and their environment variables: `mlep-operator --help` (see `app::Cli`).

#![forbid(unsafe_code)]

use clap::Parser;
use mlep_operator::app::{self, Cli};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, whatever features the build unified
    // (see the workspace Cargo.toml's rustls entry); an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match app::main(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line for the user; the details are in the log lines before it.
            eprintln!("mlep-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
