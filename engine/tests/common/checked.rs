//! The fault tests' checks: engines run their load generator with a delivery log, the
//! test stops it, waits until the cluster is quiescent and every log complete, and
//! checks all logs together with the simulator's checkers (agreed order, EVS,
//! per-sender FIFO, no duplicates, integrity, self-delivery, configuration agreement,
//! liveness) and [`no_loss_to_survivors`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ringcast_engine::daemon::delivery_log::{self, Logged, LoggedStart};
use ringcast_engine::daemon::load::Generated;
use ringcast_sim::checker;

use super::{Cluster, FORM_TIMEOUT, TOKEN_MS, wait_for};

/// Runs the load generator (`rate` messages of 64 bytes per second per node) with a
/// delivery log on every node, for [`Cluster::check_guarantees`].
pub fn with_checked_load(cluster: &mut Cluster, rate: u64) {
    cluster.delivery_logs = true;
    cluster
        .extra
        .extend(["--load-size", "64", "--load-rate", &rate.to_string()].map(String::from));
}

/// After `kill -9`, "the survivors form a new ring within the configured token +
/// consensus time" (token loss, then a consensus round without the dead node; Totem
/// §4), plus the commit token's two rotations, the test's 50 ms polling and slack for
/// scheduling on a loaded 2-core host.
pub fn assert_reformed_in_time(reformed: Duration) {
    let token = Duration::from_millis(TOKEN_MS);
    let consensus = token * 12 / 10; // the default: 1.2 × token
    let slack = Duration::from_secs(2);
    assert!(
        reformed <= token + consensus + slack,
        "re-formed after {reformed:?}; token {token:?} + consensus {consensus:?} + {slack:?}"
    );
}

/// How long nothing may change before a stopped cluster counts as quiescent: several
/// token rotations, so that retransmissions and hold releases are over.
pub const QUIET: Duration = Duration::from_millis(4 * TOKEN_MS);

impl Cluster {
    pub fn running(&self) -> Vec<u32> {
        (1..=self.n)
            .filter(|id| self.daemons[*id as usize].is_some())
            .collect()
    }

    /// Waits until node `id` delivered `n` more generated messages than now.
    pub fn wait_load_flows(&self, id: u32, n: u64) {
        let before = self.counter(id, "load_delivered");
        assert!(
            wait_for(FORM_TIMEOUT, || self.counter(id, "load_delivered")
                >= before + n),
            "node {id}: fewer than {n} generated messages delivered; logs in {}",
            self.dir.display()
        );
    }

    /// Stops every load generator (SIGUSR2) and waits until the cluster is quiescent:
    /// every running node operational in ring `members` with an empty send queue, and no
    /// counter of submits or deliveries moving for [`QUIET`].
    pub fn stop_load_and_settle(&mut self, members: &[u32]) {
        for id in self.running() {
            self.daemon(id).signal(libc::SIGUSR2);
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        let mut last = Vec::new();
        let mut quiet_since = Instant::now();
        loop {
            self.wait_ring(members, deadline.saturating_duration_since(Instant::now()))
                .unwrap();
            let now: Vec<(u64, u64, u64)> = members
                .iter()
                .filter_map(|id| self.status(*id))
                .map(|s| {
                    (
                        s.send_queue_len,
                        s.counter("messages_delivered").unwrap_or(0),
                        s.counter("load_submitted").unwrap_or(0),
                    )
                })
                .collect();
            if now != last || now.iter().any(|(queued, _, _)| *queued > 0) {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= QUIET {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not quiescent after {FORM_TIMEOUT:?}: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's delivery log, each node's starts in order, once the log of every
    /// running node holds what its counters say it did (its records are written at
    /// least every 100 ms).
    pub fn complete_logs(&self) -> Vec<LoggedStart> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut starts = Vec::new();
            let mut behind = Vec::new();
            for id in 1..=self.n {
                let text = std::fs::read_to_string(self.delivery_log(id)).unwrap_or_default();
                let mine = delivery_log::parse(&text)
                    .unwrap_or_else(|e| panic!("node {id}'s delivery log: {e}"));
                if let (Some(status), Some(last)) = (self.status(id), mine.last()) {
                    let expected = (
                        // Generated messages only: the CPG service's own (joinlists)
                        // are delivered too but not logged.
                        status.counter("load_delivered").unwrap()
                            + status.counter("load_out_of_order").unwrap(),
                        status.counter("load_submitted").unwrap(),
                        status.counter("membership_changes").unwrap()
                            + status.counter("transitional_changes").unwrap(),
                    );
                    let logged = (
                        last.deliveries() as u64,
                        last.submits() as u64,
                        last.configurations() as u64,
                    );
                    if last.pid != status.pid || logged != expected {
                        behind.push(format!(
                            "node {id}: logged (deliveries, submits, configurations) \
                             {logged:?}, counted {expected:?}"
                        ));
                    }
                } else if self.status(id).is_some() {
                    behind.push(format!("node {id}: no log"));
                }
                starts.extend(mine);
            }
            if behind.is_empty() {
                return starts;
            }
            assert!(Instant::now() < deadline, "incomplete logs: {behind:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// "Messages generated inside the engines during all this are checked
    /// against the same guarantees as in the simulator (order, EVS, no loss to
    /// survivors)". Call once quiescent in a ring of every node; `survivors` are the
    /// nodes that were never killed nor cut off from each other.
    /// Every violation of the simulator's checkers in all the engines' delivery logs,
    /// and of [`no_loss_to_survivors`] when there are survivors, one line each. Call
    /// once quiescent in a ring of every node.
    pub fn trace_violations(&self, survivors: &[u32]) -> Vec<String> {
        let starts = self.complete_logs();
        let mut violations: Vec<String> = checker::check_all(&self.trace(&starts))
            .iter()
            .map(ToString::to_string)
            .collect();
        if !survivors.is_empty()
            && let Err(e) = no_loss_to_survivors(&starts, survivors)
        {
            violations.push(e);
        }
        violations
    }

    /// The simulator's trace of these logs, with liveness and self-delivery judged:
    /// the test saw the final ring settle (stop_load_and_settle).
    fn trace(&self, starts: &[LoggedStart]) -> ringcast_sim::trace::Trace {
        let ended: Vec<u32> = (1..=self.n)
            .filter(|id| !self.running().contains(id))
            .collect();
        let mut trace = delivery_log::to_trace(self.n as usize, starts, &ended);
        trace.outcome.final_heal = Some(ringcast_engine::totem::Instant::ZERO);
        trace.outcome.quiescent_at = Some(ringcast_engine::totem::Instant::ZERO);
        trace
    }

    pub fn check_guarantees(&self, survivors: &[u32]) {
        let starts = self.complete_logs();
        let violations = checker::check_all(&self.trace(&starts));
        let shown: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            violations.is_empty(),
            "{} violations; logs in {}:\n{}",
            violations.len(),
            self.dir.display(),
            shown.join("\n")
        );
        let checked = no_loss_to_survivors(&starts, survivors).unwrap();

        // The rule is not vacuous on these very logs: one lost delivery is caught.
        let mut doctored = starts.clone();
        let victim = doctored
            .iter_mut()
            .find(|s| s.node == survivors[0])
            .expect("a survivor's log");
        let last = victim
            .records
            .iter()
            .rposition(|r| matches!(r, Logged::Delivered { generated: Some(g), .. } if survivors.contains(&g.sender)))
            .expect("a survivor delivered survivors' messages");
        victim.records.remove(last);
        assert!(no_loss_to_survivors(&doctored, survivors).is_err());

        for start in &starts {
            eprintln!(
                "node {} (pid {}): {} configurations, {} submitted, {} delivered{}",
                start.node,
                start.pid,
                start.configurations(),
                start.submits(),
                start.deliveries(),
                if start.cut { ", last line cut" } else { "" }
            );
        }
        eprintln!("{checked} messages of survivors {survivors:?} delivered by all of them");
        for id in survivors {
            let delivered = starts
                .iter()
                .filter(|s| s.node == *id)
                .map(LoggedStart::deliveries)
                .sum::<usize>();
            assert!(delivered >= 100, "node {id} delivered only {delivered}");
        }
    }
}

/// No loss to survivors: a generated message of a survivor that any node
/// delivered in a configuration (regular or transitional) of which every survivor was a
/// member is delivered by every survivor. Survivors are nodes that were never killed
/// and never cut off from each other (each has one start); what they delivered before
/// they first met (startup singletons) is exempt. Returns how many messages that was.
pub fn no_loss_to_survivors(starts: &[LoggedStart], survivors: &[u32]) -> Result<usize, String> {
    type Id = (u32, u64, u64);
    let mut wanted: HashSet<Id> = HashSet::new();
    for start in starts {
        let mut all_survivors_in = false;
        for record in &start.records {
            match record {
                Logged::Config { change, .. } => {
                    all_survivors_in = survivors.iter().all(|s| change.members.contains(s));
                }
                Logged::Delivered {
                    generated: Some(Generated { sender, epoch, seq }),
                    ..
                } if all_survivors_in && survivors.contains(sender) => {
                    wanted.insert((*sender, *epoch, *seq));
                }
                _ => {}
            }
        }
    }
    for id in survivors {
        let own: Vec<&LoggedStart> = starts.iter().filter(|s| s.node == *id).collect();
        let [only] = own[..] else {
            return Err(format!("survivor {id} started {} times", own.len()));
        };
        let got: HashSet<Id> = only
            .records
            .iter()
            .filter_map(|r| match r {
                Logged::Delivered {
                    generated: Some(Generated { sender, epoch, seq }),
                    ..
                } => Some((*sender, *epoch, *seq)),
                _ => None,
            })
            .collect();
        let mut missing: Vec<&Id> = wanted.difference(&got).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(format!(
                "survivor {id} lacks {} messages of survivors delivered elsewhere with every \
                 survivor in the configuration, first (sender, epoch, seq): {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    Ok(wanted.len())
}
