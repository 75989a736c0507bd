//! The subcommands and their arguments.

use std::path::PathBuf;

use crate::config::Config;

/// The subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Runs the server (the same as no subcommand).
    Serve(Box<Config>),
    /// Asks a running server's gRPC health service (no token needed); exits
    /// 0 when it is SERVING and 1 otherwise. For container health checks.
    Health(HealthArgs),
    /// Copies the embedded store, while the server runs, into DEST: a
    /// consistent snapshot that is a complete data directory (to restore,
    /// stop the server and put DEST in place of its data directory).
    Backup(BackupArgs),
    /// The server's address, its log head and signed checkpoint, the key
    /// that signs it, and who the token is.
    Status,
    /// Parties: create (admin), list, show.
    #[command(subcommand)]
    Party(PartyCommand),
    /// Tokens (admin): issue, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Channels: open, list, show, suspend, resume, close.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Sends a message on a channel (as the token's party).
    Send(SendArgs),
    /// Replies to a message, as its recipient.
    ///
    /// While the message is delivered or acknowledged; on the same channel
    /// unless --channel names another between the same two parties.
    Reply(ReplyArgs),
    /// Takes a message as the mediator of its current hop.
    Accept(StepArgs),
    /// Hands a message on, as the mediator of its current hop (accepting it
    /// first if need be); the last mediator delivers it.
    Forward(StepArgs),
    /// Refuses to carry a message, as the mediator of its current hop.
    ///
    /// --note says why.
    Decline(StepArgs),
    /// Confirms receipt of a delivered message (its recipient).
    Acknowledge(StepArgs),
    /// Refuses a delivered message, as its recipient.
    ///
    /// --note says why.
    Reject(StepArgs),
    /// Takes a message back before delivery, as its sender.
    ///
    /// --note says why.
    Withdraw(StepArgs),
    /// Lists messages, newest first.
    Messages(MessagesArgs),
    /// A message and its route as a timeline: who held it, when, how long.
    Show(ShowArgs),
    /// The recorded events, oldest first.
    History(HistoryArgs),
    /// Prints each event as it happens, one per line; resumes after a
    /// dropped connection or a server restart with no gap and no duplicate.
    Watch(WatchArgs),
    /// How the relay performs: per mediator (carried, declined, holding,
    /// waiting, hold and pickup times), per principal (sent, received,
    /// answered, rejected, response times) and deadlines, over the messages
    /// the token may see.
    Stats(StatsArgs),
    /// Checks the record against its signed Merkle tree (exit 3 and a
    /// one-line verdict when it finds a problem).
    ///
    /// It verifies the server's checkpoint with the trusted verifier key
    /// (--verifier-key, else the one pinned in the state file on first use),
    /// proves that the tree extends the last checkpoint it trusted, proves
    /// the inclusion of every event the token may see (or of --channel /
    /// --message) and compares each with the listing, then saves the new
    /// checkpoint. Verdicts: FORKED (the history was rewritten), ALTERED (an
    /// event differs from the tree, is damaged or missing), BAD_SIGNATURE
    /// (not signed by the trusted key), BEHIND (the tree is smaller than one
    /// trusted before).
    Audit(AuditArgs),
}

/// `backchannel health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
}

/// `backchannel backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The directory to create (or an empty one) for the backup.
    pub dest: PathBuf,
    /// The data directory to copy [default: the server's --data-dir,
    /// BACKCHANNEL_DATA_DIR or ./backchannel-data].
    #[arg(long, value_name = "D")]
    pub data_dir: Option<PathBuf>,
    /// Refused: a record in PostgreSQL is backed up with pg_dump.
    #[arg(long, hide = true)]
    pub database_url: Option<String>,
    /// Pages copied per step; the copy pauses briefly between steps.
    #[arg(
        long,
        default_value_t = crate::backup::DEFAULT_STEP_PAGES,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)),
    )]
    pub step_pages: u32,
}

/// A party's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A state.
    State,
    /// An organisation.
    Organization,
    /// A person.
    Person,
}

/// `backchannel party`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PartyCommand {
    /// Registers a party (admin).
    Create {
        /// Its id: lowercase letters, digits and `-`, starting with a letter.
        id: String,
        /// The name people see.
        #[arg(long)]
        name: String,
        /// What it is.
        #[arg(long, value_enum, default_value = "state")]
        kind: Kind,
    },
    /// Lists every party (the directory is not secret).
    List,
    /// One party.
    Show {
        /// Its id.
        id: String,
    },
}

/// `backchannel token`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Issues a token for a party (admin); it is printed once, never again.
    Issue {
        /// The party the token acts as.
        party: String,
        /// Every write with it is refused (for dashboards and bots).
        #[arg(long)]
        read_only: bool,
        /// When it stops working: a duration from now (30d, 12h) or an RFC
        /// 3339 time.
        #[arg(long, value_name = "DURATION|TIME")]
        expires: Option<String>,
    },
    /// Lists tokens (admin), of one party or of all; never their secrets.
    List {
        /// Only this party's tokens.
        party: Option<String>,
    },
    /// Revokes a token (admin): its next call is refused and its open
    /// streams end within seconds.
    Revoke {
        /// The token's id (from `token issue` or `token list`).
        token_id: String,
    },
}

/// `backchannel channel`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ChannelCommand {
    /// Opens a channel between two principals through mediators (the
    /// admin, or one of the two principals).
    Open {
        /// The first principal.
        a: String,
        /// The second principal.
        b: String,
        /// The mediators from A to B, in order (comma-separated).
        #[arg(long, value_delimiter = ',', required = true, value_name = "M1[,M2…]")]
        via: Vec<String>,
        /// The channel's name.
        #[arg(long)]
        name: String,
        /// Makes the call idempotent: a retry opens nothing new.
        #[arg(long, value_name = "UUID")]
        request_id: Option<String>,
    },
    /// Lists the channels the caller may see.
    List {
        /// Only channels this party is on (in any role).
        #[arg(long, value_name = "P")]
        party: Option<String>,
        /// Only channels in this state.
        #[arg(long, value_enum, value_name = "S")]
        state: Option<ChannelState>,
    },
    /// One channel.
    Show {
        /// Its id.
        id: String,
    },
    /// No new messages until resumed; messages in flight go on.
    Suspend(ChannelStepArgs),
    /// Opens a suspended channel again.
    Resume(ChannelStepArgs),
    /// Closes a channel for good; messages in flight go on.
    Close(ChannelStepArgs),
}

/// A channel's state, as a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChannelState {
    /// Open.
    Open,
    /// Suspended.
    Suspended,
    /// Closed.
    Closed,
}

/// The arguments of suspend, resume and close.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelStepArgs {
    /// The channel's id.
    pub id: String,
    /// Why (recorded in the event).
    #[arg(long, value_name = "N")]
    pub note: Option<String>,
    /// Refused (ABORTED) unless the channel is at this version.
    #[arg(long, value_name = "V")]
    pub expect_version: Option<u64>,
}

/// What a message carries, for send and reply.
#[derive(Debug, Clone, clap::Args)]
pub struct Content {
    /// The subject.
    #[arg(long, value_name = "S")]
    pub subject: String,
    /// The body.
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    pub body: Option<String>,
    /// The body, read from a file (`-` for standard input).
    #[arg(long, value_name = "F|-")]
    pub body_file: Option<PathBuf>,
    /// A label (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// The deadline for an answer: an RFC 3339 time, or a duration from
    /// now (+3d, or 3d).
    #[arg(long, value_name = "TIME|+DURATION")]
    pub respond_by: Option<String>,
    /// When it really happened, if earlier than now: an RFC 3339 time, or
    /// -DURATION (ago).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<String>,
    /// Makes the call idempotent: a retry with the same id sends nothing new.
    #[arg(long, value_name = "UUID")]
    pub request_id: Option<String>,
}

/// `backchannel send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The channel's id.
    pub channel: String,
    /// What it carries.
    #[command(flatten)]
    pub content: Content,
}

/// `backchannel reply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplyArgs {
    /// The message replied to.
    pub message: String,
    /// Another channel between the same two parties.
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// What it carries.
    #[command(flatten)]
    pub content: Content,
}

/// The arguments of a message's steps.
#[derive(Debug, Clone, clap::Args)]
pub struct StepArgs {
    /// The message's id.
    pub message: String,
    /// A note (required for decline, reject and withdraw: the reason).
    #[arg(long, value_name = "N")]
    pub note: Option<String>,
    /// When it really happened, if earlier than now: an RFC 3339 time, or
    /// -DURATION (ago).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<String>,
    /// Refused (ABORTED) unless the message is at this version.
    #[arg(long, value_name = "V")]
    pub expect_version: Option<u64>,
    /// Makes the call idempotent: a retry with the same id records nothing new.
    #[arg(long, value_name = "UUID")]
    pub request_id: Option<String>,
}

/// A message's state as a filter (`IN_TRANSIT`, or `in_transit`), as its
/// proto enum number.
fn message_state(s: &str) -> Result<i32, String> {
    crate::pb::message::State::from_str_name(&s.to_ascii_uppercase())
        .filter(|v| *v != crate::pb::message::State::Unspecified)
        .map(|v| v as i32)
        .ok_or_else(|| {
            "not a message state: SUBMITTED, IN_TRANSIT, DELIVERED, ACKNOWLEDGED, ANSWERED, \
             DECLINED, REJECTED, WITHDRAWN or EXPIRED"
                .to_owned()
        })
}

/// `backchannel messages`.
#[derive(Debug, Clone, clap::Args)]
pub struct MessagesArgs {
    /// Only messages on this channel.
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// Only messages this party is on (in any role).
    #[arg(long, value_name = "P")]
    pub party: Option<String>,
    /// Only messages of this thread.
    #[arg(long, value_name = "T")]
    pub thread: Option<String>,
    /// Only messages in this state (SUBMITTED, IN_TRANSIT, DELIVERED,
    /// ACKNOWLEDGED, ANSWERED, DECLINED, REJECTED, WITHDRAWN, EXPIRED).
    #[arg(long, value_name = "S", value_parser = message_state)]
    pub state: Option<i32>,
    /// At most this many (the newest).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `backchannel show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The message's id.
    pub message: String,
}

/// `backchannel history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Only this channel's events.
    #[arg(long, value_name = "C", conflicts_with = "message")]
    pub channel: Option<String>,
    /// Only this message's events.
    #[arg(long, value_name = "M")]
    pub message: Option<String>,
    /// Only events after this sequence.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,
}

/// `backchannel stats`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// Only this channel's messages.
    #[arg(long, value_name = "C")]
    pub channel: Option<String>,
    /// Only messages this party takes part in.
    #[arg(long, value_name = "P")]
    pub party: Option<String>,
    /// Only messages sent at or after this time (RFC 3339, or -DURATION
    /// for that long ago).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Only messages sent before this time (RFC 3339, or -DURATION).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
}

/// `backchannel watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Every event after this sequence first, then live.
    #[arg(long, value_name = "N", conflicts_with = "from_start")]
    pub after: Option<u64>,
    /// The whole history first, then live.
    #[arg(long)]
    pub from_start: bool,
    /// Only this channel's events (repeatable).
    #[arg(long = "channel", value_name = "C")]
    pub channels: Vec<String>,
    /// Only this message's events (repeatable).
    #[arg(long = "message", value_name = "M")]
    pub messages: Vec<String>,
    /// Only this thread's events (repeatable).
    #[arg(long = "thread", value_name = "T")]
    pub threads: Vec<String>,
    /// Only events of this type (repeatable): MESSAGE_SENT, or just SENT, …
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Stops once the history is printed (at the server's "caught up" mark).
    #[arg(long)]
    pub until_caught_up: bool,
    /// Keeps the last sequence seen in this file and starts after it when
    /// the file exists, so a restarted watch goes on where it stopped.
    #[arg(long, value_name = "F")]
    pub position_file: Option<PathBuf>,
}

/// `backchannel audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The state file: the trusted key and the last trusted checkpoint
    /// [default: $XDG_STATE_HOME/backchannel/audit/<address>.json, or
    /// ~/.local/state/…].
    #[arg(long, value_name = "F")]
    pub state: Option<PathBuf>,
    /// The verifier key to trust (`<name>+<id>+<key>`, as the server logs
    /// it and `status` shows it), instead of the one pinned in the state.
    #[arg(long, value_name = "K", env = "BACKCHANNEL_VERIFIER_KEY")]
    pub verifier_key: Option<String>,
    /// Only this channel's events.
    #[arg(long, value_name = "C", conflicts_with_all = ["message", "full"])]
    pub channel: Option<String>,
    /// Only this message's events.
    #[arg(long, value_name = "M", conflicts_with = "full")]
    pub message: Option<String>,
    /// Recompute the whole tree from the log (admin) instead of proving
    /// each event.
    #[arg(long)]
    pub full: bool,
}
