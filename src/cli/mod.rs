//! The command line (DESIGN §8): `backchannel serve` (or no subcommand)
//! runs the server; every other subcommand is a client of a running one,
//! configured by flags and the environment, readable by default (`-o
//! table`) and scriptable (`-o json`: one proto3-JSON object per line).
//!
//! Exit status: 0 on success, 1 when the server refuses or cannot be
//! reached (stderr: `error: <CODE> <REASON>: <message>`), 2 on a usage
//! error, 3 when `audit` finds a problem.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::config::Config;

mod args;
mod audit;
mod connect;
mod fail;
mod messages;
mod output;
mod records;
mod stats;
mod time;
mod watch;

pub use args::*;
pub use connect::{endpoint, url_of};
pub use fail::{CliError, chain, code_name};

/// What the command line was given.
#[derive(Debug, Parser)]
#[command(
    name = "backchannel",
    version,
    about = "The record of mediated messages, over gRPC",
    long_about = "The record of mediated messages, over gRPC.\n\n\
        With no subcommand (or `serve`) it runs the server, set by the server \
        options below; every other subcommand is a client of a running \
        server, set by the client options (--addr, --token, ...)."
)]
pub struct Cli {
    /// What to do; nothing means serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The client options.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The server options (with no subcommand).
    #[command(
        flatten,
        next_help_heading = "Server options (no subcommand, or `serve`)"
    )]
    pub serve: Config,
}

impl Cli {
    /// The command line of this process; exits with a usage error (2) when
    /// it does not parse, or when server options come before `serve`
    /// (where they would be ignored: they go after it).
    pub fn from_env() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        // Server options before a subcommand would be ignored by it
        // (`backup` alone reads --data-dir there).
        let serve = matches!(cli.command, Some(Command::Serve(_)));
        if cli.command.is_some() && !matches!(cli.command, Some(Command::Backup(_))) {
            let server_args = <Config as clap::Args>::augment_args(clap::Command::new("serve"));
            for arg in server_args.get_arguments() {
                let id = arg.get_id().as_str();
                if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
                    continue;
                }
                let flag = arg.get_long().unwrap_or(id);
                let why = if serve {
                    format!("--{flag} comes before `serve`: put the server options after it")
                } else {
                    format!(
                        "--{flag} is an option of the server; a client subcommand takes \
                         --addr, --token, --token-file, --ca-cert, -o …"
                    )
                };
                Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, why)
                    .exit();
            }
        }
        cli
    }
}

/// How the client subcommands print what they get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people: aligned columns, times in the local zone.
    Table,
    /// For programs: one proto3-JSON object per line (the names grpcurl prints).
    Json,
    /// For scripts: only each record's id (an event's sequence; for `token
    /// issue`, the token), one per line.
    Id,
}

/// The options of every client subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// The server: `http://HOST:PORT`, `https://HOST:PORT` (TLS), or
    /// `HOST:PORT`.
    #[arg(
        long,
        env = "BACKCHANNEL_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// The token to call with. On the command line it is visible to other
    /// users of this machine (in `ps`): prefer --token-file or the
    /// environment. Without either flag: BACKCHANNEL_TOKEN, else the file
    /// BACKCHANNEL_TOKEN_FILE names (a flag always wins over a variable).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// A file holding the token (e.g. a data directory's `admin.token`).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates to check the server's certificate with (TLS;
    /// implies https). Default: the system's roots.
    #[arg(long, env = "BACKCHANNEL_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (mTLS).
    #[arg(
        long,
        env = "BACKCHANNEL_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "BACKCHANNEL_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<PathBuf>,
    /// Output format: table, json, or id (only the ids, for scripts).
    #[arg(
        short = 'o',
        long,
        env = "BACKCHANNEL_OUTPUT",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Output,
}

/// Runs one client subcommand and returns its exit status.
pub async fn run(client: ClientArgs, command: Command) -> std::process::ExitCode {
    let out = output::Out::new(client.output);
    let result = match command {
        Command::Serve(_) | Command::Health(_) | Command::Backup(_) => {
            Err(CliError::usage("not a client subcommand"))
        }
        Command::Status => records::status(&client, &out).await,
        Command::Party(c) => records::party(&client, &out, c).await,
        Command::Token(c) => records::token(&client, &out, c).await,
        Command::Channel(c) => records::channel(&client, &out, c).await,
        Command::Send(a) => messages::send(&client, &out, a).await,
        Command::Reply(a) => messages::reply(&client, &out, a).await,
        Command::Accept(a) => messages::step(&client, &out, messages::Step::Accept, a).await,
        Command::Forward(a) => messages::step(&client, &out, messages::Step::Forward, a).await,
        Command::Decline(a) => messages::step(&client, &out, messages::Step::Decline, a).await,
        Command::Acknowledge(a) => {
            messages::step(&client, &out, messages::Step::Acknowledge, a).await
        }
        Command::Reject(a) => messages::step(&client, &out, messages::Step::Reject, a).await,
        Command::Withdraw(a) => messages::step(&client, &out, messages::Step::Withdraw, a).await,
        Command::Messages(a) => messages::list(&client, &out, a).await,
        Command::Show(a) => messages::show(&client, &out, a).await,
        Command::History(a) => messages::history(&client, &out, a).await,
        Command::Watch(a) => watch::watch(&client, &out, a).await,
        Command::Stats(a) => stats::stats(&client, &out, a).await,
        Command::Audit(a) => audit::audit(&client, &out, a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let token_given = connect::token_given(&client).is_ok_and(|t| t.is_some());
            e.on_connection_to(&url_of(&client)).report(token_given)
        }
    }
}
