//! The `backchannel` binary: serve, or run one client subcommand.

use backchannel::cli::{Cli, Command};
use backchannel::config::LogFormat;

// jemalloc gives freed memory back to the system (glibc's malloc kept the
// pages of closed streams, on PostgreSQL all of them), with a thread of its
// own that purges within seconds even when the server is idle.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn purge_in_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start the allocator's purging thread");
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::from_env();
    let config = match cli.command {
        None => cli.serve,
        Some(Command::Serve(config)) => *config,
        Some(Command::Health(h)) => {
            return backchannel::health::health_check(&cli.client, &h.service).await;
        }
        Some(Command::Backup(b)) => {
            let request = backchannel::backup::Request::new(&b, &cli.serve);
            return backchannel::backup::command(request).await;
        }
        Some(client) => {
            // A client logs only when asked to (RUST_LOG), on stderr.
            if std::env::var_os("RUST_LOG").is_some() {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                    .with_writer(std::io::stderr)
                    .init();
            }
            return backchannel::cli::run(cli.client, client).await;
        }
    };
    init_tracing(config.log_format);
    purge_in_background();
    match backchannel::server::run(config, backchannel::server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "backchannel stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
