//! `cairn`: one binary for the data node, the client commands, the interactive
//! shell and the load generator.
//!
//! - `args`: the command line (clap).
//! - `client_cmd`: `put`, `get`, `delete`, `doc …`, `table …`: one request each,
//!   printed as text or JSON, with a non-zero exit code on any error.
//! - `shell`: the interactive prompt.
//! - `bench`: concurrent load with latency percentiles.
//! - `node_cmd`: runs a data node until SIGTERM or Ctrl-C.
//! - `control_cmd`: the control plane — `up`, `down`, `status`, `apply`, and
//!   the `agent` and `cloud` processes.

mod args;
mod bench;
mod client_cmd;
mod control_cmd;
mod error;
mod node_cmd;
mod output;
mod shell;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one TLS cryptography of the process, for every HTTPS client.
    cairn_tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Node(node) => runtime.block_on(node_cmd::run(node)),
        Command::Cert(command) => node_cmd::cert(cli.global.output, command),
        Command::Release(args) => node_cmd::release(cli.global.output, &args),
        Command::Restore(args) => node_cmd::restore(cli.global.output, &args),
        Command::Up(args) => runtime.block_on(control_cmd::up(cli.global.output, args)),
        Command::Down(args) => runtime.block_on(control_cmd::down(cli.global.output, args)),
        Command::Status(args) => runtime.block_on(control_cmd::status(&cli.global, args)),
        Command::Console(args) => runtime.block_on(control_cmd::console(&cli.global, args)),
        Command::Apply(args) => runtime.block_on(control_cmd::apply(cli.global.output, args)),
        Command::Agent(args) => runtime.block_on(control_cmd::agent(cli.global.output, args)),
        Command::Cloud(args) => runtime.block_on(control_cmd::cloud(cli.global.output, args)),
        Command::Watch(args) => runtime.block_on(client_cmd::watch(&cli.global, args)),
        Command::Shell => shell::run(&runtime, &cli.global),
        Command::Bench(bench) => runtime.block_on(bench::run(&cli.global, bench)),
        Command::Backup(args) if args.via_cloud => {
            runtime.block_on(control_cmd::backup_via_cloud(cli.global.output, args))
        }
        command => runtime.block_on(client_cmd::run(&cli.global, command)),
    }
}
