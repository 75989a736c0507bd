//! Health: what `grpc.health.v1` reports, kept current by probing the
//! store, and the `health` subcommand that asks a running server.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::{Caller, Command};
use crate::store::Store;

/// The services whose health is reported (`""` is the whole server).
pub const HEALTH_SERVICES: [&str; 4] = [
    "",
    "backchannel.v1.PartyService",
    "backchannel.v1.ChannelService",
    "backchannel.v1.MessageService",
];

/// How often the store is probed (a small write) for the health status:
/// a fault, or a data directory removed while idle, shows within this.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_millis(500);

pub async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in HEALTH_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// Reports the whole server (`""`) NOT_SERVING while the store cannot
/// commit or cannot be read, and SERVING again when it can, until shutdown.
/// Each tick commits one small probe write through the writer, so health
/// follows the writer's ability to commit even when no one writes, and a
/// fault that clears is noticed without a client having to write. The
/// per-service names stay SERVING meanwhile, so a liveness check on one of
/// them does not restart a process that only waits for its disk or
/// database; shutdown flips all.
pub async fn probe_store(
    store: Store,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let wrote = store.write(Caller::Admin, Command::Probe).await;
        let ok = wrote.is_ok() && store.write_fault().is_none() && store.head().await.is_ok();
        if ok != serving && !shutdown.is_cancelled() {
            serving = ok;
            let status = if ok {
                tracing::info!("store commits again: SERVING");
                tonic_health::ServingStatus::Serving
            } else {
                let why = match &wrote {
                    Err(crate::store::WriteError::Store(e)) => crate::store::fault_name(e.fault),
                    Err(crate::store::WriteError::Refused(r)) => r.reason.as_str(),
                    Ok(_) => "STORE_UNAVAILABLE",
                };
                tracing::warn!(reason = why, "store cannot commit: NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        }
    }
}

/// The `health` subcommand: asks a running server (no token needed), over
/// TLS when the client options say so.
pub async fn health_check(args: &crate::cli::ClientArgs, service: &str) -> std::process::ExitCode {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let url = crate::cli::url_of(args);
    let asked = async {
        let channel = crate::cli::endpoint(args)?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| crate::cli::CliError::Unreachable {
                addr: url.clone(),
                cause: crate::cli::chain(&e),
            })?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|s| crate::cli::CliError::from(s).on_connection_to(&url))?;
        Ok::<_, crate::cli::CliError>(r.into_inner().status)
    };
    match asked.await {
        Ok(s) if s == ServingStatus::Serving as i32 => {
            println!("SERVING");
            std::process::ExitCode::SUCCESS
        }
        Ok(s) => {
            println!(
                "{}",
                ServingStatus::try_from(s).map_or("UNKNOWN", |s| s.as_str_name())
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}", e.line());
            std::process::ExitCode::FAILURE
        }
    }
}
