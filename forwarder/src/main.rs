//! `p11fwd`: the forwarder daemon and command-line tools.

use clap::{Parser, Subcommand};

/// Use a PKCS#11 token that sits on another machine, as if it were plugged in here.
#[derive(Debug, Parser)]
#[command(name = "p11fwd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the tokens and objects behind a p11-kit compatible socket, with their pkcs11: URIs.
    List(p11fwd_forwarder::list::ListArgs),
    /// Serve PKCS#11 tokens over the p11-kit RPC protocol (a drop-in for `p11-kit server`).
    Server(p11fwd_forwarder::cli::ServerArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List(args) => p11fwd_forwarder::list::run(args),
        Command::Server(args) => p11fwd_forwarder::cli::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p11fwd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
