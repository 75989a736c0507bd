//! `backchannel stats`: how the relay performs, as tables.

use super::connect::connect;
use super::output::{Out, Table, line};
use super::time::{human, parse};
use super::{CliError, ClientArgs, StatsArgs};
use crate::pb;

/// `backchannel stats`.
pub async fn stats(args: &ClientArgs, out: &Out, a: StatsArgs) -> Result<(), CliError> {
    let since = a
        .since
        .as_deref()
        .map(|s| parse("--since", s))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse("--until", s))
        .transpose()?;
    let mut c = connect(args).await?;
    let s = c
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest {
            channel_id: a.channel.unwrap_or_default(),
            party_id: a.party.unwrap_or_default(),
            since,
            until,
        })
        .await?
        .into_inner();
    if out.machine(&s, "backchannel.v1.RelayStats", &s.messages.to_string())? {
        return Ok(());
    }
    line(&format!(
        "{} messages, counted through sequence {}",
        s.messages, s.head_sequence
    ))?;
    line("")?;
    let mut t = Table::new(&[
        "MEDIATOR",
        "CARRIED",
        "DECLINED",
        "HOLDING",
        "WAITING",
        "HOLD p50/p90/max",
        "PICKUP p50/p90/max",
    ]);
    for m in &s.mediators {
        t.row(vec![
            m.party_id.clone(),
            m.carried.to_string(),
            m.declined.to_string(),
            m.holding.to_string(),
            m.waiting.to_string(),
            spread(m.hold_time.as_ref()),
            spread(m.pickup_time.as_ref()),
        ]);
    }
    t.print("no mediators")?;
    line("")?;
    let mut t = Table::new(&[
        "PRINCIPAL",
        "SENT",
        "RECEIVED",
        "ANSWERED",
        "REJECTED",
        "RESPONSE p50/p90/max",
    ]);
    for p in &s.principals {
        t.row(vec![
            p.party_id.clone(),
            p.sent.to_string(),
            p.received.to_string(),
            p.answered.to_string(),
            p.rejected.to_string(),
            spread(p.response_time.as_ref()),
        ]);
    }
    t.print("no principals")?;
    let d = s.deadlines.unwrap_or_default();
    line("")?;
    line(&format!(
        "deadlines   {} open, {} met, {} expired",
        d.open, d.met, d.expired
    ))
}

/// `2h13m / 5h2m / 1d3h (n=4)`, or `-` when there are none.
fn spread(d: Option<&pb::Durations>) -> String {
    let Some(d) = d.filter(|d| d.count > 0) else {
        return "-".to_owned();
    };
    let h = |x: Option<&prost_types::Duration>| {
        x.map_or_else(
            || "-".to_owned(),
            |x| human(chrono::TimeDelta::new(x.seconds, 0).unwrap_or_default()),
        )
    };
    format!(
        "{} / {} / {} (n={})",
        h(d.p50.as_ref()),
        h(d.p90.as_ref()),
        h(d.max.as_ref()),
        d.count
    )
}
