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
    /// Write a URI-PEM key file (`-----BEGIN PKCS#11 PROVIDER URI-----`) naming a token key, for
    /// programs that only load keys from files (curl --key, SSL_CTX_use_PrivateKey_file).
    UriPem(UriPemArgs),
}

#[derive(Debug, clap::Args)]
struct UriPemArgs {
    /// The key's pkcs11: URI (type=private or no type).
    uri: String,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    out: Option<std::path::PathBuf>,
}

fn uri_pem(args: UriPemArgs) -> anyhow::Result<std::process::ExitCode> {
    let (pem, warnings) = p11fwd_conf::uripem::pem_for_uri(&args.uri)?;
    for w in warnings {
        eprintln!("p11fwd: warning: {w}");
    }
    match args.out {
        Some(path) => std::fs::write(&path, pem)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        None => print!("{pem}"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List(args) => p11fwd_forwarder::list::run(args),
        Command::Server(args) => p11fwd_forwarder::cli::run(args),
        Command::UriPem(args) => uri_pem(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p11fwd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
