//! Submissions and completions: what each io_uring user data means, arming the
//! receives, signal and wake reads and client socket polls, and dispatching each
//! completion to its handler (signals and the test-only drop rule included).

use super::*;

// user_data: kind in the top byte, an index below.
pub(super) const KIND_SHIFT: u32 = 56;

pub(super) const KIND_RECV: u64 = 1;

pub(super) const KIND_SEND: u64 = 2;

pub(super) const KIND_SIGNAL: u64 = 3;

pub(super) const KIND_WAKE: u64 = 4;

/// The client listening socket is readable (multishot poll).
pub(super) const KIND_ACCEPT: u64 = 5;

/// A client socket is readable; index = generation << 24 | slot.
pub(super) const KIND_CLIENT: u64 = 6;

/// Completion of a cancelled client poll (nothing to do).
pub(super) const KIND_CANCEL: u64 = 7;

pub(super) const SLOT_BITS: u32 = 24;

pub(super) fn client_index(slot: usize, generation: u32) -> usize {
    ((generation as usize) << SLOT_BITS) | slot
}

pub(super) fn user_data(kind: u64, index: usize) -> u64 {
    (kind << KIND_SHIFT) | index as u64
}

impl Engine {
    pub(super) fn socket_fd(&self, index: usize) -> i32 {
        match (index, &self.sockets.multicast) {
            (0, _) => self.sockets.unicast.as_raw_fd(),
            (_, Some(m)) => m.as_raw_fd(),
            (_, None) => unreachable!("no socket {index}"),
        }
    }

    /// Room for `n` more submissions, flushing the queue to the kernel if needed.
    pub(super) fn reserve_sq(&mut self, n: usize) -> bool {
        let room = |ring: &mut IoUring| {
            let sq = ring.submission();
            sq.capacity() - sq.len() >= n
        };
        if room(&mut self.ring) {
            return true;
        }
        let _ = self.ring.submit();
        room(&mut self.ring)
    }

    pub(super) fn push(&mut self, entry: &io_uring::squeue::Entry) {
        assert!(self.reserve_sq(1), "submission queue stuck full");
        // SAFETY: every entry built by this engine points only at memory the engine owns
        // and keeps alive until the completion (see the module doc); the caller upholds
        // that for its entry.
        unsafe { self.ring.submission().push(entry) }.expect("room reserved");
    }

    pub(super) fn arm_recv(&mut self, index: usize) {
        let entry = opcode::RecvMsgMulti::new(
            Fd(self.socket_fd(index)),
            &self.recv_msghdrs[index],
            self.bufring.group(),
        )
        .build()
        .user_data(user_data(KIND_RECV, index));
        // The msghdr lives in a never-reallocated boxed slice as long as the engine; the buffers belong to the
        // registered ring.
        self.push(&entry);
        self.recv_armed[index] = true;
    }

    pub(super) fn arm_signal(&mut self) {
        let entry = opcode::Read::new(
            Fd(self.signal_fd.as_raw_fd()),
            self.signal_buf.as_mut_ptr(),
            SIGINFO_BYTES as u32,
        )
        .build()
        .user_data(user_data(KIND_SIGNAL, 0));
        // The buffer is boxed and lives as long as the engine.
        self.push(&entry);
    }

    pub(super) fn arm_wake(&mut self) {
        let entry = opcode::Read::new(Fd(self.waker.raw_fd()), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(user_data(KIND_WAKE, 0));
        // The buffer is boxed and lives as long as the engine.
        self.push(&entry);
    }

    pub(super) fn arm_accept(&mut self) {
        let entry = opcode::PollAdd::new(Fd(self.ipc.listener_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(KIND_ACCEPT, 0));
        // A poll references no engine memory.
        self.push(&entry);
    }

    pub(super) fn arm_client(&mut self, slot: usize) {
        let Some((generation, fd)) = self.ipc.session_fd(slot) else {
            return;
        };
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(KIND_CLIENT, client_index(slot, generation)));
        // A poll references no engine memory.
        self.push(&entry);
    }

    /// Cancels the socket polls of sessions the IPC layer closed (the poll holds a
    /// reference to the socket, which is only really closed once it is gone).
    pub(super) fn cancel_closed_polls(&mut self) {
        let closed: Vec<(usize, u32)> = self.ipc.take_closed().collect();
        for (slot, generation) in closed {
            let target = user_data(KIND_CLIENT, client_index(slot, generation));
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(KIND_CANCEL, 0));
            // A cancellation references no engine memory.
            self.push(&entry);
        }
    }

    pub(super) fn on_client_readable(
        &mut self,
        now: Instant,
        index: usize,
        result: i32,
        flags: u32,
    ) {
        let slot = index & ((1 << SLOT_BITS) - 1);
        let generation = (index >> SLOT_BITS) as u32;
        if !self.ipc.is_current(slot, generation) {
            return;
        }
        if result < 0 {
            if -result != libc::ECANCELED {
                self.ipc.drop_session(slot, &mut self.host, now);
            }
            return;
        }
        if !self.ipc.on_readable(slot, &mut self.host, now) {
            return;
        }
        if !cqueue::more(flags) {
            self.arm_client(slot);
        }
    }

    pub(super) fn on_completion(
        &mut self,
        now: Instant,
        data: u64,
        result: i32,
        flags: u32,
    ) -> Result<(), EngineError> {
        let index = (data & ((1 << KIND_SHIFT) - 1)) as usize;
        match data >> KIND_SHIFT {
            KIND_RECV => return self.on_recv(now, index, result, flags),
            KIND_SEND => self.on_send(index, result, flags),
            KIND_SIGNAL => self.on_signal(now, result),
            KIND_WAKE => self.arm_wake(),
            KIND_ACCEPT => {
                if !cqueue::more(flags) {
                    self.arm_accept();
                }
                for slot in self.ipc.on_accept() {
                    self.arm_client(slot);
                }
            }
            KIND_CLIENT => self.on_client_readable(now, index, result, flags),
            KIND_CANCEL => {}
            _ => debug_assert!(false, "unknown completion {data:#x}"),
        }
        Ok(())
    }

    /// A signal arrived: SIGUSR1 reloads the drop rule, SIGUSR2 stops the load
    /// generator, SIGTERM/SIGINT make the node leave the ring.
    pub(super) fn on_signal(&mut self, now: Instant, result: i32) {
        let signo = i32::from_ne_bytes([
            self.signal_buf[0],
            self.signal_buf[1],
            self.signal_buf[2],
            self.signal_buf[3],
        ]);
        let complete = result as usize == SIGINFO_BYTES;
        if complete && signo == libc::SIGUSR1 {
            self.reload_drop_rule();
        } else if complete && signo == libc::SIGUSR2 {
            // Tests and benchmarks end their load phase without stopping engines.
            self.hooks.stop_load();
        } else if complete && self.leaving_until.is_none() {
            tracing::info!(signal = signo, "termination signal: leaving the ring");
            self.host.leave(now);
            self.leaving_until = Some(now + LEAVE_FLUSH);
        }
        self.arm_signal();
    }

    /// Fault injection for partition tests (a test-only drop rule): on SIGUSR1, `<state_dir>/drop_nodes` (node ids separated by commas or
    /// whitespace; missing or empty = none) lists the nodes whose datagrams this engine
    /// drops on arrival. Writing complementary lists on both sides and sending SIGUSR1
    /// partitions the cluster; empty lists heal it. Only IO is affected, never Totem.
    pub(super) fn reload_drop_rule(&mut self) {
        let path = self.config.settings.state_dir.join("drop_nodes");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut ids: Vec<NodeId> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter_map(|id| id.parse().ok())
            .filter(|id| self.config.addr_of(*id).is_some())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        tracing::warn!(path = %path.display(), drop_from = ?ids, "drop rule reloaded");
        self.drop_from = ids;
    }
}
