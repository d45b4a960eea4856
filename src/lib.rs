//! The `nubo` binary's library: role runners (`up`, `controller`) and the
//! client commands. `main.rs` only parses arguments and calls in here.

pub mod bench;
pub mod cli;
pub mod roles;
pub mod zipdir;

/// The controllers' client, under the path tests and older callers use.
pub use nubo_client as client;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "nubo", version, about = "nubo: self-hosted Function-as-a-Service", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: cli::GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform in one process with embedded storage.
    Up(roles::UpArgs),
    /// Run one controller (a member of the Raft group).
    Controller(roles::ControllerArgs),
    /// Run a worker: runs functions in container sandboxes (needs root and crun).
    Worker(roles::WorkerArgs),
    /// Run a benchmark and write its figures to BENCHMARKS.md.
    #[command(hide = true)]
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Up(args) => roles::run_up(args).await,
        Command::Controller(args) => roles::run_controller(args).await,
        Command::Worker(args) => roles::run_worker(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Client(cmd) => cli::run_client(&cli.global, cmd).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => cli::report_error(&e),
    }
}

#[cfg(test)]
mod tests {
    /// Every subcommand's argument definitions are consistent (clap checks
    /// names, conflicts and groups only when a command is built).
    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
