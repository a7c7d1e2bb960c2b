//! The control socket: the handshake (`Hello`, credentials, the region and its
//! descriptors), synchronous requests (join, leave, membership, iteration, node list),
//! each handed to the host, and the replies.

use super::*;

/// The `cs_error_t` a client sees for a service error.
pub fn status_of(e: CpgError) -> Status {
    Status::from_u32(e.cs_error()).unwrap_or(Status::Library)
}

impl Ipc {
    pub(super) fn allowed(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == self.own_uid
            || self.config.allowed_uids.contains(&uid)
            || self.config.allowed_gids.contains(&gid)
    }

    /// The socket of `slot` is readable: every queued request (or EOF). Returns false
    /// when the session was closed (its poll must be cancelled).
    pub fn on_readable(&mut self, slot: usize, host: &mut Host, now: Instant) -> bool {
        // A client has at most one request outstanding; the bound only guards against
        // one that ignores that.
        for _ in 0..64 {
            match self.one_request(slot, host, now) {
                Some(true) => continue,
                Some(false) => return false,
                None => return true,
            }
        }
        true
    }

    /// Handles one request. `None` when nothing is queued, `Some(false)` when the
    /// session was closed.
    pub(super) fn one_request(
        &mut self,
        slot: usize,
        host: &mut Host,
        now: Instant,
    ) -> Option<bool> {
        let Some(session) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
            return Some(false);
        };
        let request = match session.socket.recv(&mut self.recv_buf) {
            Ok(Some((n, _fds))) => Request::decode(&self.recv_buf[..n]),
            Ok(None) => {
                self.close(slot, host, now, "client closed");
                return Some(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                tracing::debug!(error = %e, "client socket error");
                self.close(slot, host, now, "socket error");
                return Some(false);
            }
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed request; closing the session");
                self.stats.sessions_faulted += 1;
                self.close(slot, host, now, "malformed request");
                return Some(false);
            }
        };
        let ready = self.slots[slot].as_ref().is_some_and(|s| s.ready.is_some());
        Some(match (ready, request) {
            (false, Request::Hello { version, pid }) => self.hello(slot, version, pid, host, now),
            (false, _) | (true, Request::Hello { .. }) => {
                self.reply(slot, Reply::Status(Status::BadHandle));
                self.close(slot, host, now, "request out of sequence");
                false
            }
            (true, Request::Finalize) => {
                let _ = self.drain_submit(slot, host, now, true);
                self.reply(slot, Reply::Status(Status::Ok));
                self.close(slot, host, now, "finalized");
                false
            }
            (true, request) => {
                let reply = self.request(slot, request, host, now);
                self.reply(slot, reply);
                self.slots[slot].is_some()
            }
        })
    }

    pub(super) fn hello(
        &mut self,
        slot: usize,
        version: u32,
        pid: u32,
        host: &mut Host,
        now: Instant,
    ) -> bool {
        let Some(session) = self.slots[slot].as_ref() else {
            return false;
        };
        let cred = session.cred;
        let conn = session.conn;
        if version != proto::PROTOCOL_VERSION {
            return self.refuse(
                slot,
                Status::Version,
                "protocol version mismatch",
                host,
                now,
            );
        }
        if !self.allowed(cred.uid, cred.gid) {
            return self.refuse(slot, Status::Access, "user not allowed", host, now);
        }
        // The pid the client reports is only a label in membership lists; the kernel's
        // is what we trust when they differ (a client inside another pid namespace).
        let pid = if cred.pid > 0 { cred.pid as u32 } else { pid };
        let (region, wake) = match self.session_region(conn) {
            Ok(created) => created,
            Err((status, why)) => return self.refuse(slot, status, why, host, now),
        };
        if let Err(e) = host.connect(conn, pid) {
            return self.refuse(
                slot,
                status_of(e),
                "service refused the connection",
                host,
                now,
            );
        }
        let slab = self.send_slab(conn);
        let welcome = self.welcome(host, slab);
        let mut fds = vec![region.fd(), wake.as_fd(), self.engine_wake.as_fd()];
        if let Some(pool) = &self.placement {
            fds.push(pool.pool().fd());
        }
        let sent = self.slots[slot]
            .as_ref()
            .map(|s| s.socket.send(&welcome.encode(), &fds));
        let Some(mut ready) = Ready::new(region.clone(), wake) else {
            unreachable!("a fresh region hands out each ring end once");
        };
        ready.slab = slab;
        if !matches!(sent, Some(Ok(()))) {
            host.disconnect(now, conn);
            self.close(slot, host, now, "welcome not delivered");
            return false;
        }
        region.set_client_pid(pid);
        if let Some(s) = self.slots[slot].as_mut() {
            s.ready = Some(ready);
        }
        self.stats.sessions_opened += 1;
        tracing::info!(
            conn,
            pid,
            uid = cred.uid,
            huge_pages = region.huge_pages(),
            "client connected"
        );
        true
    }

    /// A new session's region and the client's eventfd, or what to refuse it with.
    fn session_region(
        &self,
        conn: ConnId,
    ) -> Result<(Arc<Region>, EventFd), (Status, &'static str)> {
        let huge = if self.config.huge_pages {
            HugePages::Try
        } else {
            HugePages::Never
        };
        let name = format!("client-{conn}");
        let region = Region::create(&name, &self.config.region, huge).map_err(|e| {
            tracing::warn!(error = %e, "cannot create a client region");
            (Status::NoMemory, "region creation failed")
        })?;
        let wake = EventFd::new().map_err(|e| {
            tracing::warn!(error = %e, "eventfd");
            (Status::NoResources, "eventfd failed")
        })?;
        Ok((Arc::new(region), wake))
    }

    /// Trusted senders: a slab of the delivery pool to write messages in, as (offset,
    /// bytes); none when the pool cannot spare one (the client then sends as any
    /// other) or senders are not trusted.
    fn send_slab(&mut self, conn: ConnId) -> Option<(u64, usize)> {
        let bytes = self.config.trusted_slab_bytes;
        let pool = self.placement.as_ref().filter(|_| bytes > 0)?;
        let Some(offset) = pool.pool().alloc_raw(bytes) else {
            tracing::warn!(conn, bytes, "no room in the delivery pool for a send slab");
            return None;
        };
        let slab = SendSlab {
            offset,
            len: bytes,
            outstanding: 0,
            closed: false,
        };
        self.slabs.insert(conn, slab);
        Some((offset, bytes))
    }

    /// The `Welcome` of an accepted client.
    fn welcome(&self, host: &Host, slab: Option<(u64, usize)>) -> Welcome {
        Welcome {
            status: Status::Ok,
            version: proto::PROTOCOL_VERSION,
            node_id: self.local,
            max_message_bytes: host.cpg_limits().max_message_bytes as u64,
            delivery_pool_bytes: self.placement.as_ref().map_or(0, |p| p.pool().len() as u64),
            send_slab_offset: slab.map_or(0, |s| s.0),
            send_slab_bytes: slab.map_or(0, |s| s.1 as u64),
            send_header_room: cpg::MCAST_HEADER_MAX as u32,
        }
    }

    pub(super) fn refuse(
        &mut self,
        slot: usize,
        status: Status,
        why: &str,
        host: &mut Host,
        now: Instant,
    ) -> bool {
        if let Some(s) = self.slots[slot].as_ref() {
            tracing::warn!(pid = s.cred.pid, uid = s.cred.uid, why, "client refused");
        }
        self.stats.sessions_refused += 1;
        self.reply_welcome(slot, status, &[]);
        self.close(slot, host, now, why);
        false
    }

    pub(super) fn request(
        &mut self,
        slot: usize,
        request: Request,
        host: &mut Host,
        now: Instant,
    ) -> Reply {
        let conn = match self.slots[slot].as_ref() {
            Some(s) => s.conn,
            None => return Reply::Status(Status::BadHandle),
        };
        match request {
            Request::Join { flags, name } => {
                if flags & !1 != 0 {
                    return Reply::Status(Status::InvalidParam);
                }
                self.group_change(slot, &name, host, now, |host, group| {
                    host.join(now, conn, group, flags & 1 != 0)
                })
            }
            Request::Leave { name } => self.group_change(slot, &name, host, now, |host, group| {
                host.leave_group(now, conn, group)
            }),
            Request::Membership { name } => match GroupName::new(&name) {
                Ok(group) => Reply::Membership {
                    status: Status::Ok,
                    members: host
                        .membership(&group)
                        .into_iter()
                        .map(|m| WireMember {
                            node: m.node,
                            pid: m.pid,
                        })
                        .collect(),
                },
                Err(e) => Reply::Membership {
                    status: status_of(e),
                    members: Vec::new(),
                },
            },
            Request::LocalGet => Reply::LocalGet {
                status: Status::Ok,
                node: self.local,
            },
            Request::IterInit { kind, name } => self.iter_init(slot, kind, name, host),
            Request::IterNext { iter, index } => self.iter_next(slot, iter, index),
            Request::IterFinalize { iter } => {
                let Some(ready) = self.ready_mut(slot) else {
                    return Reply::Status(Status::BadHandle);
                };
                let before = ready.iterations.len();
                ready.iterations.retain(|(id, _)| *id != iter);
                Reply::Status(if ready.iterations.len() < before {
                    Status::Ok
                } else {
                    Status::BadHandle
                })
            }
            Request::Nodes => Reply::Nodes {
                status: Status::Ok,
                ring: host.members().to_vec(),
                nodes: (self.config.nodes.iter())
                    .map(|(id, addr)| proto::WireNode {
                        node: *id,
                        addr: addr.to_string().into_bytes(),
                    })
                    .collect(),
            },
            Request::Gs(gs) => self.gs_request(slot, gs, host, now),
            Request::Hello { .. } | Request::Finalize => Reply::Status(Status::BadHandle),
        }
    }

    /// A join or leave: the session's earlier multicasts go first (drained from its
    /// ring), then `change` on the named group.
    pub(super) fn group_change(
        &mut self,
        slot: usize,
        name: &[u8],
        host: &mut Host,
        now: Instant,
        change: impl FnOnce(&mut Host, &GroupName) -> Result<(), CpgError>,
    ) -> Reply {
        if !self.drain_submit(slot, host, now, true) {
            return Reply::Status(Status::TryAgain);
        }
        let group = match GroupName::new(name) {
            Ok(g) => g,
            Err(e) => return Reply::Status(status_of(e)),
        };
        Reply::Status(match change(host, &group) {
            Ok(()) => Status::Ok,
            Err(e) => {
                if e == CpgError::TooManyMembers {
                    // Debug, not warn: a client can repeat the refused join at will.
                    tracing::debug!(
                        group = %String::from_utf8_lossy(name),
                        limit = host.cpg_limits().max_members_per_group,
                        "join refused: the group is full (ipc.max_members_per_group)"
                    );
                }
                status_of(e)
            }
        })
    }

    pub(super) fn iter_init(
        &mut self,
        slot: usize,
        kind: u32,
        name: Option<Vec<u8>>,
        host: &Host,
    ) -> Reply {
        let refused = |status| Reply::IterInit {
            status,
            iter: 0,
            total: 0,
        };
        let kind = match proto::IterKind::from_u32(kind) {
            Some(proto::IterKind::NameOnly) => IterationKind::NameOnly,
            Some(proto::IterKind::OneGroup) => IterationKind::OneGroup,
            Some(proto::IterKind::All) => IterationKind::All,
            None => return refused(Status::InvalidParam),
        };
        let group = match name.as_deref().map(GroupName::new).transpose() {
            Ok(g) => g,
            Err(e) => return refused(status_of(e)),
        };
        let snapshot = match host.iterate(kind, group.as_ref()) {
            Ok(s) => s,
            Err(e) => return refused(status_of(e)),
        };
        let Some(ready) = self.ready_mut(slot) else {
            return refused(Status::BadHandle);
        };
        if ready.iterations.len() >= MAX_ITERATIONS {
            return refused(Status::NoResources);
        }
        let id = ready.next_iteration;
        ready.next_iteration = ready.next_iteration.wrapping_add(1).max(1);
        let total = snapshot.len() as u32;
        ready.iterations.push((id, snapshot));
        Reply::IterInit {
            status: Status::Ok,
            iter: id,
            total,
        }
    }

    pub(super) fn iter_next(&mut self, slot: usize, iter: u32, index: u32) -> Reply {
        let Some(ready) = self.ready_mut(slot) else {
            return Reply::Status(Status::BadHandle);
        };
        let Some((_, snapshot)) = ready.iterations.iter().find(|(id, _)| *id == iter) else {
            return Reply::IterNext {
                status: Status::BadHandle,
                entries: Vec::new(),
            };
        };
        let start = (index as usize).min(snapshot.len());
        let entries = snapshot[start..]
            .iter()
            .take(ITER_BATCH)
            .map(|(g, m)| IterEntry {
                name: g.as_bytes().to_vec(),
                node: m.node,
                pid: m.pid,
            })
            .collect();
        Reply::IterNext {
            status: Status::Ok,
            entries,
        }
    }

    pub(super) fn reply(&mut self, slot: usize, reply: Reply) {
        if let Some(s) = self.slots[slot].as_ref() {
            // A client that does not read its replies gets EAGAIN here after 200 KiB of
            // them; it is broken and will notice the closed socket.
            if let Err(e) = s.socket.send(&reply.encode(), &[]) {
                tracing::debug!(error = %e, "reply not delivered");
            }
        }
    }

    pub(super) fn reply_welcome(&mut self, slot: usize, status: Status, fds: &[BorrowedFd<'_>]) {
        let welcome = Welcome::refusal(status, self.local);
        if let Some(s) = self.slots[slot].as_ref() {
            let _ = s.socket.send(&welcome.encode(), fds);
        }
    }
}
