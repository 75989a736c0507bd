//! The figures of `GetRelayStats`, computed from the [`Index`] over the
//! messages of some channels sent in a window.

use std::collections::HashMap;

use super::index::{HopRec, Index, NEVER, Rec};
use crate::domain::{HopState, MessageState};
use crate::pb;

/// What to count: the messages of these channels sent in `[since, until)`
/// (µs, by their reported send time).
pub(super) struct Scope {
    pub(super) channels: Vec<u32>,
    pub(super) since: i64,
    pub(super) until: i64,
}

#[derive(Default)]
struct MediatorAcc {
    carried: u64,
    declined: u64,
    holding: u64,
    waiting: u64,
    hold: Vec<i64>,
    pickup: Vec<i64>,
}

#[derive(Default)]
struct PrincipalAcc {
    sent: u64,
    received: u64,
    answered: u64,
    rejected: u64,
    response: Vec<i64>,
}

#[derive(Default)]
struct Acc {
    mediators: Vec<(u32, MediatorAcc)>,
    principals: Vec<(u32, PrincipalAcc)>,
    mediator_at: HashMap<u32, usize>,
    principal_at: HashMap<u32, usize>,
    deadlines: pb::relay_stats::Deadlines,
    messages: u64,
}

impl Acc {
    fn mediator(&mut self, party: u32) -> usize {
        *self.mediator_at.entry(party).or_insert_with(|| {
            self.mediators.push((party, MediatorAcc::default()));
            self.mediators.len() - 1
        })
    }

    fn principal(&mut self, party: u32) -> usize {
        *self.principal_at.entry(party).or_insert_with(|| {
            self.principals.push((party, PrincipalAcc::default()));
            self.principals.len() - 1
        })
    }
}

/// Counts what `scope` covers. Every party on the route of a channel in
/// scope is listed, with zeros if none of its messages is counted.
pub(super) fn figures(ix: &Index, scope: &Scope) -> pb::RelayStats {
    let mut acc = Acc::default();
    for &c in &scope.channels {
        let channel = &ix.channels[c as usize];
        let Some((principals, mediators)) = channel.members.split_at_checked(2) else {
            continue;
        };
        let principals: Vec<usize> = principals.iter().map(|&p| acc.principal(p)).collect();
        // (party, accumulator) of each mediator: a hop finds its own among
        // at most eight.
        let mediators: Vec<(u32, usize)> =
            mediators.iter().map(|&p| (p, acc.mediator(p))).collect();
        for &m in &channel.messages {
            let r = &ix.messages[m as usize];
            if r.send < scope.since || r.send >= scope.until {
                continue;
            }
            let (sender, recipient) = if r.from_first {
                (principals[0], principals[1])
            } else {
                (principals[1], principals[0])
            };
            count(&mut acc, ix, r, (sender, recipient), &mediators);
        }
    }
    finish(ix, acc)
}

/// Counts one message.
fn count(
    acc: &mut Acc,
    ix: &Index,
    r: &Rec,
    (sender, recipient): (usize, usize),
    mediators: &[(u32, usize)],
) {
    acc.messages += 1;
    acc.principals[sender].1.sent += 1;
    let hops = ix.hops_of(r);
    let live = matches!(r.state, MessageState::Submitted | MessageState::InTransit);
    let current = hops.iter().position(|h| h.state != HopState::Forwarded);
    let mut arrival = r.send;
    for (i, h) in hops.iter().enumerate() {
        let Some(&(_, at)) = mediators.iter().find(|(p, _)| *p == h.mediator) else {
            // A route that is not its channel's: not counted per mediator.
            arrival = h.forward;
            continue;
        };
        hop(
            &mut acc.mediators[at].1,
            h,
            arrival,
            live && current == Some(i),
        );
        arrival = h.forward;
    }
    let delivered = match hops.last() {
        Some(last) if current.is_none() => last.forward,
        _ => NEVER,
    };
    if delivered != NEVER {
        let p = &mut acc.principals[recipient].1;
        p.received += 1;
        match r.state {
            MessageState::Answered => {
                p.answered += 1;
                if r.answered != NEVER {
                    p.response.push(r.answered.saturating_sub(delivered));
                }
            }
            MessageState::Rejected => p.rejected += 1,
            _ => {}
        }
    }
    if r.respond_by != NEVER {
        match r.state {
            MessageState::Answered => acc.deadlines.met += 1,
            MessageState::Expired => acc.deadlines.expired += 1,
            MessageState::Submitted
            | MessageState::InTransit
            | MessageState::Delivered
            | MessageState::Acknowledged => acc.deadlines.open += 1,
            _ => {}
        }
    }
}

/// Counts one hop for its mediator; `arrival` is when the message reached
/// it, `current` whether it is the hop the message waits at now.
fn hop(m: &mut MediatorAcc, h: &HopRec, arrival: i64, current: bool) {
    match h.state {
        HopState::Forwarded => {
            m.carried += 1;
            if h.accept != NEVER && h.forward != NEVER {
                m.hold.push(h.forward.saturating_sub(h.accept));
            }
        }
        HopState::Declined => m.declined += 1,
        HopState::Accepted => m.holding += 1,
        HopState::Pending if current => m.waiting += 1,
        _ => {}
    }
    if h.accept != NEVER && arrival != NEVER {
        m.pickup.push(h.accept.saturating_sub(arrival));
    }
}

fn finish(ix: &Index, acc: Acc) -> pb::RelayStats {
    let name = |p: u32| ix.parties[p as usize].as_str().to_owned();
    let mut mediators: Vec<pb::relay_stats::Mediator> = acc
        .mediators
        .into_iter()
        .map(|(p, mut m)| pb::relay_stats::Mediator {
            party_id: name(p),
            carried: m.carried,
            declined: m.declined,
            holding: m.holding,
            waiting: m.waiting,
            hold_time: Some(durations(&mut m.hold)),
            pickup_time: Some(durations(&mut m.pickup)),
        })
        .collect();
    mediators.sort_by(|a, b| a.party_id.cmp(&b.party_id));
    let mut principals: Vec<pb::relay_stats::Principal> = acc
        .principals
        .into_iter()
        .map(|(p, mut s)| pb::relay_stats::Principal {
            party_id: name(p),
            sent: s.sent,
            received: s.received,
            answered: s.answered,
            rejected: s.rejected,
            response_time: Some(durations(&mut s.response)),
        })
        .collect();
    principals.sort_by(|a, b| a.party_id.cmp(&b.party_id));
    pb::RelayStats {
        mediators,
        principals,
        deadlines: Some(acc.deadlines),
        messages: acc.messages,
        head_sequence: ix.head,
    }
}

/// Count, median, 90th percentile (nearest rank) and largest of `us`
/// (microseconds; reordered).
pub(super) fn durations(us: &mut [i64]) -> pb::Durations {
    let n = us.len();
    if n == 0 {
        return pb::Durations::default();
    }
    let max = us.iter().copied().max().unwrap_or(0);
    // Nearest rank: the ⌈q·n⌉-th smallest.
    let k90 = (9 * n).div_ceil(10) - 1;
    let k50 = n.div_ceil(2) - 1;
    let (below, &mut p90, _) = us.select_nth_unstable(k90);
    let p50 = if k50 == k90 {
        p90
    } else {
        *below.select_nth_unstable(k50).1
    };
    pb::Durations {
        count: n as u64,
        p50: Some(duration(p50)),
        p90: Some(duration(p90)),
        max: Some(duration(max)),
    }
}

/// A `google.protobuf.Duration` of `us` microseconds (seconds and nanos of
/// one sign, as the type requires).
fn duration(us: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: us / 1_000_000,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Option<prost_types::Duration>) -> i64 {
        d.map_or(-1, |d| d.seconds)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<i64> = (1..=10).rev().map(|s| s * 1_000_000).collect();
        let d = durations(&mut v);
        assert_eq!(
            (d.count, secs(d.p50), secs(d.p90), secs(d.max)),
            (10, 5, 9, 10)
        );
        let mut one = vec![7_000_000];
        let d = durations(&mut one);
        assert_eq!((secs(d.p50), secs(d.p90), secs(d.max)), (7, 7, 7));
        let mut three = vec![3_000_000, 1_000_000, 2_000_000];
        let d = durations(&mut three);
        assert_eq!((secs(d.p50), secs(d.p90)), (2, 3));
        assert_eq!(durations(&mut []).p50, None);
    }

    #[test]
    fn negative_durations_keep_one_sign() {
        let d = duration(-1_500_000);
        assert_eq!((d.seconds, d.nanos), (-1, -500_000_000));
    }
}
