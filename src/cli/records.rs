//! `status`, `party`, `token` and `channel`.

use super::connect::{Client, connect};
use super::output::{Out, Table, line};
use super::time::{local, local_minute, parse_expiry};
use super::{ChannelCommand, ChannelState, ChannelStepArgs, CliError, ClientArgs, Kind};
use super::{Output, PartyCommand, TokenCommand};
use crate::pb;

/// `backchannel status`.
pub async fn status(args: &ClientArgs, out: &Out) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    let who = c.parties.who_am_i(pb::WhoAmIRequest {}).await?;
    let header = |name: &str| {
        who.metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned()
    };
    let (version, store) = (header("backchannel-version"), header("backchannel-store"));
    let who = who.into_inner();
    let head = c
        .messages
        .list_events(pb::ListEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .head_sequence;
    let checkpoint = c
        .audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner();
    if out.is_json() {
        let value = serde_json::json!({
            "addr": c.url,
            "serverVersion": version,
            "store": store,
            "headSequence": head.to_string(),
            "checkpoint": serde_json::from_str::<serde_json::Value>(
                &super::output::json(&checkpoint, "backchannel.v1.Checkpoint")?
            ).unwrap_or_default(),
            "whoAmI": serde_json::from_str::<serde_json::Value>(
                &super::output::json(&who, "backchannel.v1.WhoAmIResponse")?
            ).unwrap_or_default(),
        });
        return line(&value.to_string());
    }
    let me = if who.admin {
        "the admin".to_owned()
    } else if who.read_only {
        format!("{} (read-only token)", who.party_id)
    } else {
        who.party_id
    };
    line(&format!("server    {}", c.url))?;
    line(&format!("version   backchannel {version}"))?;
    line(&format!("store     {store}"))?;
    line(&format!("head      sequence {head}"))?;
    {
        use base64::Engine;
        line(&format!(
            "log       {}, checkpoint of size {}, root {}",
            checkpoint.origin,
            checkpoint.tree_size,
            base64::engine::general_purpose::STANDARD.encode(&checkpoint.root_hash)
        ))?;
    }
    line(&format!("key       {}", checkpoint.verifier_key))?;
    line(&format!("you are   {me}"))
}

fn kind_name(k: i32) -> &'static str {
    pb::party::Kind::try_from(k).map_or("?", |k| k.as_str_name())
}

fn print_parties(out: &Out, parties: &[pb::Party]) -> Result<(), CliError> {
    if out.is_json() {
        for p in parties {
            out.machine(p, "backchannel.v1.Party", &p.id)?;
        }
        return Ok(());
    }
    let mut t = Table::new(&["ID", "KIND", "CREATED", "NAME"]);
    for p in parties {
        t.row(vec![
            p.id.clone(),
            kind_name(p.kind).to_owned(),
            local(p.create_time.as_ref()),
            p.display_name.clone(),
        ]);
    }
    t.print("no parties")
}

/// `backchannel party …`.
pub async fn party(args: &ClientArgs, out: &Out, cmd: PartyCommand) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    match cmd {
        PartyCommand::Create { id, name, kind } => {
            let kind = match kind {
                Kind::State => pb::party::Kind::State,
                Kind::Organization => pb::party::Kind::Organization,
                Kind::Person => pb::party::Kind::Person,
            };
            let p = c
                .parties
                .create_party(pb::CreatePartyRequest {
                    party_id: id,
                    display_name: name,
                    kind: kind as i32,
                })
                .await?
                .into_inner();
            print_parties(out, &[p])
        }
        PartyCommand::Show { id } => {
            let p = c
                .parties
                .get_party(pb::GetPartyRequest { party_id: id })
                .await?
                .into_inner();
            print_parties(out, &[p])
        }
        PartyCommand::List => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .parties
                    .list_parties(pb::ListPartiesRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                all.extend(r.parties);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            print_parties(out, &all)
        }
    }
}

/// `backchannel token …`.
pub async fn token(args: &ClientArgs, out: &Out, cmd: TokenCommand) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    match cmd {
        TokenCommand::Issue {
            party,
            read_only,
            expires,
        } => {
            let expire_time = expires.map(|e| parse_expiry("--expires", &e)).transpose()?;
            let r = c
                .parties
                .issue_token(pb::IssueTokenRequest {
                    party_id: party.clone(),
                    read_only,
                    expire_time,
                })
                .await?
                .into_inner();
            if out.machine(&r, "backchannel.v1.IssueTokenResponse", &r.token)? {
                return Ok(());
            }
            // The secret alone on stdout (`backchannel token issue P > P.token`).
            line(&r.token)?;
            eprintln!(
                "token {} for {party}: shown only this once; keep it in a file (mode 0600) \
                 and pass it with --token-file or BACKCHANNEL_TOKEN",
                r.token_id
            );
            Ok(())
        }
        TokenCommand::List { party } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .parties
                    .list_tokens(pb::ListTokensRequest {
                        party_id: party.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                all.extend(r.tokens);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            if out.is_json() {
                for t in &all {
                    out.machine(t, "backchannel.v1.TokenInfo", &t.token_id)?;
                }
                return Ok(());
            }
            let mut t = Table::new(&["TOKEN ID", "PARTY", "MAY", "STATUS", "LAST USED"]);
            for k in &all {
                let status = if k.revoke_time.is_some() {
                    "revoked".to_owned()
                } else if let Some(e) = &k.expire_time {
                    if e.seconds <= super::time::now().seconds {
                        "expired".to_owned()
                    } else {
                        format!("until {}", local_minute(Some(e)))
                    }
                } else {
                    "active".to_owned()
                };
                t.row(vec![
                    k.token_id.clone(),
                    k.party_id.clone(),
                    if k.read_only { "read" } else { "write" }.to_owned(),
                    status,
                    local_minute(k.last_use_time.as_ref()),
                ]);
            }
            t.print("no tokens")
        }
        TokenCommand::Revoke { token_id } => {
            c.parties
                .revoke_token(pb::RevokeTokenRequest {
                    token_id: token_id.clone(),
                })
                .await?;
            match out.format {
                Output::Json => {
                    let revoked = serde_json::json!({ "tokenId": token_id, "revoked": true });
                    return line(&revoked.to_string());
                }
                Output::Id => return line(&token_id),
                Output::Table => {}
            }
            line(&format!("token {token_id} revoked"))
        }
    }
}

/// The route of a channel from its first principal: `iran → france → united-states`.
pub fn route(ch: &pb::Channel) -> String {
    let mut stops: Vec<&str> = Vec::new();
    if let Some(a) = ch.parties.first() {
        stops.push(a);
    }
    stops.extend(ch.mediators.iter().map(String::as_str));
    if let Some(b) = ch.parties.get(1) {
        stops.push(b);
    }
    stops.join(" → ")
}

fn channel_state(s: i32) -> &'static str {
    pb::channel::State::try_from(s).map_or("?", |s| s.as_str_name())
}

fn print_channel(out: &Out, ch: &pb::Channel) -> Result<(), CliError> {
    if out.machine(ch, "backchannel.v1.Channel", &ch.id)? {
        return Ok(());
    }
    line(&format!("channel   {}", ch.id))?;
    line(&format!("name      {}", ch.display_name))?;
    line(&format!("route     {}", route(ch)))?;
    line(&format!(
        "state     {}  (version {})",
        channel_state(ch.state),
        ch.version
    ))?;
    line(&format!("opened    {}", local(ch.create_time.as_ref())))?;
    line(&format!("updated   {}", local(ch.update_time.as_ref())))
}

fn print_channel_list(out: &Out, channels: &[pb::Channel]) -> Result<(), CliError> {
    if out.is_json() {
        for ch in channels {
            out.machine(ch, "backchannel.v1.Channel", &ch.id)?;
        }
        return Ok(());
    }
    let mut t = Table::new(&["ID", "STATE", "NAME", "ROUTE"]);
    for ch in channels {
        t.row(vec![
            ch.id.clone(),
            channel_state(ch.state).to_owned(),
            ch.display_name.clone(),
            route(ch),
        ]);
    }
    t.print("no channels")
}

/// `backchannel channel …`.
pub async fn channel(args: &ClientArgs, out: &Out, cmd: ChannelCommand) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    // Suspend, resume and close take the same fields.
    macro_rules! change {
        ($args:expr, $method:ident, $request:ident) => {{
            let ChannelStepArgs {
                id,
                note,
                expect_version,
            } = $args;
            c.channels
                .$method(pb::$request {
                    channel_id: id,
                    note: note.unwrap_or_default(),
                    expected_version: expect_version.unwrap_or(0),
                })
                .await?
        }};
    }
    let ch = match cmd {
        ChannelCommand::Open {
            a,
            b,
            via,
            name,
            request_id,
        } => {
            c.channels
                .create_channel(pb::CreateChannelRequest {
                    display_name: name,
                    parties: vec![a, b],
                    mediators: via,
                    request_id: request_id.unwrap_or_default(),
                })
                .await?
        }
        ChannelCommand::Show { id } => {
            c.channels
                .get_channel(pb::GetChannelRequest { channel_id: id })
                .await?
        }
        ChannelCommand::List { party, state } => {
            return list_channels(&mut c, out, party, state).await;
        }
        ChannelCommand::Suspend(s) => change!(s, suspend_channel, SuspendChannelRequest),
        ChannelCommand::Resume(s) => change!(s, resume_channel, ResumeChannelRequest),
        ChannelCommand::Close(s) => change!(s, close_channel, CloseChannelRequest),
    };
    print_channel(out, &ch.into_inner())
}

async fn list_channels(
    c: &mut Client,
    out: &Out,
    party: Option<String>,
    state: Option<ChannelState>,
) -> Result<(), CliError> {
    let state = state.map_or(0, |s| match s {
        ChannelState::Open => pb::channel::State::Open as i32,
        ChannelState::Suspended => pb::channel::State::Suspended as i32,
        ChannelState::Closed => pb::channel::State::Closed as i32,
    });
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .channels
            .list_channels(pb::ListChannelsRequest {
                party_id: party.clone().unwrap_or_default(),
                state,
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        all.extend(r.channels);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    print_channel_list(out, &all)
}
