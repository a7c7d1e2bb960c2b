//! Group Services requests from a session (docs/group-services.md §2): decoded from
//! the control socket, handed to the host as they are (a GS client is its session,
//! `gs::ClientId` = the session's `ConnId`), answered with the host's result. The
//! session passed the same `SO_PEERCRED` check as any CPG client at its `Hello`.
//! Nothing here decides anything of the protocol.

use ringcast_proto::gs::{self, GsError};
use ringcast_shm::gs_proto::{GROUP_VIEW_STATE_BYTES, GsReply, GsRequest};

use super::session::GsOutgoing;
use super::*;

/// Room left in a groups reply for its header.
const GROUPS_REPLY_HEADROOM: usize = 1024;

/// A group name as the service takes it; CPG's rules (1..=128 bytes).
fn group(name: &[u8]) -> Result<GroupName, GsError> {
    GroupName::new(name).map_err(|e| match e {
        CpgError::NameTooLong => GsError::NameTooLong,
        _ => GsError::BadParameter,
    })
}

/// A deactivate script path: UTF-8 and absolute (the daemon's working directory is
/// not the client's).
fn script_path(script: Option<Vec<u8>>) -> Result<Option<String>, GsError> {
    let Some(bytes) = script else {
        return Ok(None);
    };
    let path = String::from_utf8(bytes).map_err(|_| GsError::BadParameter)?;
    if !path.starts_with('/') || path.contains('\0') {
        return Err(GsError::BadParameter);
    }
    Ok(Some(path))
}

impl Ipc {
    /// One GS request of the session in `slot`.
    pub(super) fn gs_request(
        &mut self,
        slot: usize,
        request: GsRequest,
        host: &mut Host,
        now: Instant,
    ) -> Reply {
        let Some(client) = self.slots[slot].as_ref().map(|s| s.conn) else {
            return Reply::Status(Status::BadHandle);
        };
        let done = match request {
            GsRequest::Groups => return Reply::Gs(groups_reply(host.gs_groups())),
            GsRequest::InPool { offset, len } => match self.pool_request(slot, offset, len) {
                Ok(request) => return self.gs_request(slot, request, host, now),
                Err(e) => Err(e),
            },
            GsRequest::Connect { script } => {
                script_path(script).and_then(|script| host.gs_connect(client, script))
            }
            GsRequest::Join {
                group: name,
                instance,
                attrs,
            } => group(&name).and_then(|g| host.gs_join(now, client, &g, instance, attrs)),
            GsRequest::Propose {
                group: name,
                proposal,
            } => group(&name).and_then(|g| host.gs_propose(now, client, &g, proposal)),
            GsRequest::Vote {
                group: name,
                seq,
                phase,
                vote,
            } => group(&name).and_then(|g| host.gs_vote(now, client, &g, (seq, phase), vote)),
            GsRequest::Goodbye { group: name } => group(&name).and_then(|g| {
                // The instance, to drop its events still in the session's backlog.
                let instance = host.gs_local_instance(client, &g);
                host.gs_goodbye(now, client, &g)?;
                if let (Some(instance), Some(ready)) = (instance, self.ready_mut(slot)) {
                    ready.drop_gs_provider(&g, instance);
                }
                Ok(())
            }),
            GsRequest::Subscribe { group: name, flags } => {
                group(&name).and_then(|g| host.gs_subscribe(client, &g, flags))
            }
            GsRequest::Unsubscribe { group: name } => {
                group(&name).and_then(|g| host.gs_unsubscribe(client, &g))
            }
        };
        Reply::Gs(GsReply::Done(done))
    }

    /// The request a client wrote into its region pool: copied out (the client may
    /// change those bytes at any time; the copy is what counts), then decoded.
    fn pool_request(&self, slot: usize, offset: u64, len: u64) -> Result<GsRequest, GsError> {
        let region = &self.slots[slot]
            .as_ref()
            .and_then(|s| s.ready.as_ref())
            .ok_or(GsError::NoInit)?
            .region;
        let bytes = region
            .pool_slice(offset, len)
            .ok_or(GsError::BadParameter)?
            .to_vec();
        GsRequest::decode_body(&bytes).map_err(|_| GsError::BadParameter)
    }

    /// The credentials of a session's client (deactivate scripts run as its user).
    pub fn client_cred(&self, conn: ConnId) -> Option<ringcast_shm::socket::PeerCred> {
        let slot = *self.slot_of.get(&conn)?;
        self.slots.get(slot)?.as_ref().map(|s| s.cred)
    }

    /// The host's GS events into the sessions' event rings (after CPG's of the same
    /// round: the two services' events are not ordered with each other).
    pub(super) fn flush_gs_events(&mut self, host: &mut Host, now: Instant) -> usize {
        let mut n = 0;
        while let Some((client, event)) = host.poll_gs_event() {
            n += 1;
            self.stats.events_to_clients += 1;
            let Some(&slot) = self.slot_of.get(&client) else {
                continue;
            };
            self.dirty.insert(slot);
            let outgoing = GsOutgoing {
                bytes: bytes::Bytes::from(ringcast_shm::gs_proto::encode_event(&event)),
                provider: provider_of(&event),
            };
            let pushed = self
                .ready_mut(slot)
                .map(|ready| ready.push_event(Outgoing::Gs(outgoing)));
            if let Some(Err(e)) = pushed {
                self.fault(slot, e, host, now);
            }
        }
        n
    }
}

/// The group and instance of a provider's event (none for a subscriber's or a
/// delayed error).
fn provider_of(event: &gs::GsEvent) -> Option<(GroupName, u16)> {
    use gs::GsEvent::*;
    match event {
        NPhase {
            group, provider, ..
        }
        | Approved {
            group, provider, ..
        }
        | Rejected {
            group, provider, ..
        }
        | Announcement {
            group, provider, ..
        }
        | Merge { group, provider } => Some((group.clone(), provider.instance)),
        Subscription { .. } | DelayedError { .. } => None,
    }
}

/// As many groups as fit in one socket message, state values cut for display.
fn groups_reply(views: Vec<gs::GroupView>) -> GsReply {
    let mut room = MAX_SOCKET_MESSAGE_BYTES - GROUPS_REPLY_HEADROOM;
    let total = views.len();
    let mut groups = Vec::new();
    for mut view in views {
        view.state.truncate(GROUP_VIEW_STATE_BYTES);
        let bytes = GsReply::view_bytes(&view);
        if bytes > room {
            break;
        }
        room -= bytes;
        groups.push(view);
    }
    GsReply::Groups {
        truncated: groups.len() < total,
        groups,
    }
}
