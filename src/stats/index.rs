//! The compact copy of every message that relay statistics are computed
//! from: per message its channel, direction, state, send time, deadline and
//! answer time, and per hop its mediator, state and reported times. No
//! subject, body or labels are kept, so a million messages with two hops
//! take about 110 MB.

use std::collections::HashMap;

use crate::domain::{Channel, HopState, Message, MessageState, PartyId};

/// "No time": a step that has not happened.
pub(super) const NEVER: i64 = i64::MIN;

/// One message, as statistics see it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rec {
    /// When the sender reports it was sent (µs).
    pub(super) send: i64,
    /// Its deadline, or [`NEVER`].
    pub(super) respond_by: i64,
    /// When its reply was sent, or [`NEVER`].
    pub(super) answered: i64,
    /// The version this copy is of.
    pub(super) version: u64,
    /// Where its hops start in [`Index::hops`].
    pub(super) hops_at: u32,
    /// How many hops it has.
    pub(super) hop_count: u8,
    /// Its state.
    pub(super) state: MessageState,
    /// Whether the channel's first principal sent it.
    pub(super) from_first: bool,
}

/// One hop of one message.
#[derive(Debug, Clone, Copy)]
pub(super) struct HopRec {
    /// When the mediator reports it took the message, or [`NEVER`].
    pub(super) accept: i64,
    /// When the mediator reports it handed the message on, or [`NEVER`].
    pub(super) forward: i64,
    /// The mediator, in [`Index::parties`].
    pub(super) mediator: u32,
    /// The hop's state.
    pub(super) state: HopState,
}

/// A channel: its route, and its messages in the order they were learnt.
#[derive(Debug, Default)]
pub(super) struct ChannelRec {
    /// The two principals, then the mediators in route order.
    pub(super) members: Vec<u32>,
    /// Its messages, in [`Index::messages`].
    pub(super) messages: Vec<u32>,
}

/// Every message and channel the log holds, as of [`Index::head`].
#[derive(Debug, Default)]
pub(super) struct Index {
    /// The last sequence applied.
    pub(super) head: u64,
    pub(super) messages: Vec<Rec>,
    pub(super) hops: Vec<HopRec>,
    pub(super) channels: Vec<ChannelRec>,
    /// Party ids by their number.
    pub(super) parties: Vec<PartyId>,
    by_message: HashMap<u128, u32>,
    pub(super) by_channel: HashMap<u128, u32>,
    pub(super) by_party: HashMap<PartyId, u32>,
    /// Answer times of replies whose original is not known yet (while
    /// loading, replies come before their originals).
    early_answers: HashMap<u128, i64>,
}

fn time(t: Option<crate::domain::Time>) -> i64 {
    t.map_or(NEVER, |t| t.0)
}

impl Index {
    /// The number of a party, interned on first sight.
    fn party(&mut self, p: &PartyId) -> u32 {
        if let Some(&n) = self.by_party.get(p) {
            return n;
        }
        let n = self.parties.len() as u32;
        self.parties.push(p.clone());
        self.by_party.insert(p.clone(), n);
        n
    }

    /// Records a channel (its route never changes).
    pub(super) fn channel(&mut self, c: &Channel) -> u32 {
        if let Some(&n) = self.by_channel.get(&c.id.0.as_u128()) {
            return n;
        }
        let members = c
            .parties
            .iter()
            .chain(c.mediators.iter())
            .map(|p| self.party(p))
            .collect();
        let n = self.channels.len() as u32;
        self.channels.push(ChannelRec {
            members,
            messages: Vec::new(),
        });
        self.by_channel.insert(c.id.0.as_u128(), n);
        n
    }

    /// Records a message's state, unless a newer one is already known. A
    /// message of a channel not seen yet records the channel from it.
    pub(super) fn message(&mut self, m: &Message) {
        let key = m.id.0.as_u128();
        if let Some(reply_to) = m.in_reply_to {
            self.answer(reply_to.0.as_u128(), m.send_time.0);
        }
        let channel = match self.by_channel.get(&m.channel_id.0.as_u128()) {
            Some(&c) => c,
            None => self.channel(&Channel {
                id: m.channel_id,
                display_name: String::new(),
                parties: [m.sender.clone(), m.recipient.clone()],
                mediators: m.hops.iter().map(|h| h.mediator.clone()).collect(),
                state: crate::domain::ChannelState::Open,
                version: 0,
                create_time: m.create_time,
                update_time: m.create_time,
            }),
        };
        let sender = self.party(&m.sender);
        let from_first = self.channels[channel as usize].members.first() == Some(&sender);
        let hops: Vec<HopRec> = m
            .hops
            .iter()
            .map(|h| HopRec {
                accept: time(h.accept_time),
                forward: time(h.forward_time),
                mediator: self.party(&h.mediator),
                state: h.state,
            })
            .collect();
        match self.by_message.get(&key) {
            Some(&n) => {
                let rec = &mut self.messages[n as usize];
                if rec.version >= m.version {
                    return;
                }
                rec.version = m.version;
                rec.state = m.state;
                rec.respond_by = time(m.respond_by);
                let at = rec.hops_at as usize;
                let count = (rec.hop_count as usize).min(hops.len());
                self.hops[at..at + count].copy_from_slice(&hops[..count]);
            }
            None => {
                let n = self.messages.len() as u32;
                self.messages.push(Rec {
                    send: m.send_time.0,
                    respond_by: time(m.respond_by),
                    answered: self.early_answers.remove(&key).unwrap_or(NEVER),
                    version: m.version,
                    hops_at: self.hops.len() as u32,
                    hop_count: hops.len().min(u8::MAX as usize) as u8,
                    state: m.state,
                    from_first,
                });
                self.hops
                    .extend_from_slice(&hops[..hops.len().min(u8::MAX as usize)]);
                self.by_message.insert(key, n);
                self.channels[channel as usize].messages.push(n);
            }
        }
    }

    /// Records when the message `original` was answered.
    fn answer(&mut self, original: u128, at: i64) {
        match self.by_message.get(&original) {
            Some(&n) => self.messages[n as usize].answered = at,
            None => {
                self.early_answers.insert(original, at);
            }
        }
    }

    /// Ends a load: answers whose original never came are dropped.
    pub(super) fn loaded(&mut self) {
        self.early_answers = HashMap::new();
    }

    /// The hops of one message.
    pub(super) fn hops_of(&self, r: &Rec) -> &[HopRec] {
        let at = r.hops_at as usize;
        &self.hops[at..at + r.hop_count as usize]
    }

    /// How many messages it holds.
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }
}
