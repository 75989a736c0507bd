//! The world the scenarios run in: parties, tokens, connections.

use crate::*;

/// Parties, tokens, connections and channels of one run.
pub(crate) struct World {
    pub(crate) addr: String,
    pub(crate) admin: Identity,
    pub(crate) iran: Identity,
    pub(crate) france: Identity,
    pub(crate) us: Identity,
    pub(crate) ids: Parties,
    pub(crate) server_pid: Option<u32>,
    /// `SendMessage` calls of this run that succeeded, so the messages a
    /// server the bench started holds (`sustained` tops the store up to
    /// its preload, and divides the disk used by this).
    pub(crate) stored: Arc<AtomicU64>,
}

pub(crate) struct Parties {
    pub(crate) iran: String,
    pub(crate) france: String,
    pub(crate) us: String,
}

impl World {
    pub(crate) async fn setup(
        addr: &str,
        admin_token: &str,
        connections: usize,
        pid: Option<u32>,
    ) -> Result<World> {
        let mut conns = Vec::new();
        for _ in 0..connections {
            conns.push(connect(addr).await?);
        }
        let admin = Identity::new(&conns, admin_token)?;
        // A suffix keeps runs against one long-lived server apart.
        let sfx = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let ids = Parties {
            iran: format!("iran-{sfx}"),
            france: format!("france-{sfx}"),
            us: format!("united-states-{sfx}"),
        };
        let mut a = admin.on(0);
        let mut tokens = Vec::new();
        for id in [&ids.iran, &ids.france, &ids.us] {
            a.parties
                .create_party(pb::CreatePartyRequest {
                    party_id: id.clone(),
                    display_name: id.to_uppercase(),
                    kind: pb::party::Kind::State as i32,
                })
                .await?;
            tokens.push(
                a.parties
                    .issue_token(pb::IssueTokenRequest {
                        party_id: id.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .token,
            );
        }
        Ok(World {
            addr: addr.to_string(),
            iran: Identity::new(&conns, &tokens[0])?,
            france: Identity::new(&conns, &tokens[1])?,
            us: Identity::new(&conns, &tokens[2])?,
            admin,
            ids,
            server_pid: pid,
            stored: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Opens iran → france → united-states.
    pub(crate) async fn channel(&self, name: &str) -> Result<String> {
        Ok(self
            .admin
            .on(0)
            .channels
            .create_channel(pb::CreateChannelRequest {
                display_name: name.into(),
                parties: vec![self.ids.iran.clone(), self.ids.us.clone()],
                mediators: vec![self.ids.france.clone()],
                request_id: String::new(),
            })
            .await?
            .into_inner()
            .id)
    }

    /// The log's head, as the admin sees it now.
    pub(crate) async fn head(&self, channel: &str) -> Result<u64> {
        Ok(self
            .admin
            .on(0)
            .messages
            .list_messages(pb::ListMessagesRequest {
                channel_id: channel.into(),
                page_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner()
            .head_sequence)
    }

    pub(crate) fn rss(&self) -> Option<u64> {
        rss_kib(self.server_pid)
    }
}

pub(crate) fn send_req(channel: &str, n: u64) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        channel_id: channel.into(),
        subject: format!("bench message {n}"),
        body: BODY.into(),
        labels: [("topic".to_string(), "bench".to_string())].into(),
        ..Default::default()
    }
}
