//! Invariant checkers over a recorded [`Trace`] (docs/invariants.md; Totem paper
//! §2 and §5 for agreed/safe delivery and extended virtual synchrony; docs/cpg.md
//! §9.4–9.6). Each checker judges node incarnations separately: a restarted node is a
//! new process as far as the guarantees go.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::trace::{Incarnation, Integrity, MsgId, Record, RecordKind, Trace};
use ringcast_proto::totem::{ConfigurationChange, ConfigurationKind, Guarantee, NodeId, RingId};

/// Lines of trace shown with a violation.
pub const EXCERPT: usize = 20;
/// Violations reported per checker per run (the first ones; more add nothing).
const MAX_PER_CHECKER: usize = 3;

/// One broken guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub node: Option<NodeId>,
    pub incarnation: Option<u32>,
    pub message: String,
    /// The last relevant records before the violation.
    pub excerpt: Vec<String>,
    /// Filled in by [`super::run`].
    pub seed: u64,
    pub replay: String,
}

impl Violation {
    fn new(checker: &'static str, inc: Option<&Incarnation>, message: String) -> Violation {
        Violation {
            checker,
            node: inc.map(|i| i.node),
            incarnation: inc.map(|i| i.number),
            message,
            excerpt: Vec::new(),
            seed: 0,
            replay: String::new(),
        }
    }

    fn with_excerpt(mut self, lines: Vec<String>) -> Violation {
        self.excerpt = lines;
        self
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} [{}]", self.seed, self.checker)?;
        if let (Some(node), Some(inc)) = (self.node, self.incarnation) {
            write!(f, " n{node}#{inc}")?;
        }
        writeln!(f, ": {}", self.message)?;
        for line in &self.excerpt {
            writeln!(f, "    {line}")?;
        }
        if !self.replay.is_empty() {
            writeln!(f, "  replay: {}", self.replay)?;
        }
        Ok(())
    }
}

/// Runs every checker (self-delivery only for runs that ended settled, liveness only
/// for runs that were not cut short).
pub fn check_all(trace: &Trace) -> Vec<Violation> {
    let index = Index::new(trace);
    let mut out = Vec::new();
    let mut add = |mut found: Vec<Violation>| {
        found.truncate(MAX_PER_CHECKER);
        out.extend(found);
    };
    add(integrity(trace, &index));
    add(no_duplicates(trace, &index));
    add(sender_fifo(trace, &index));
    add(agreed_order(trace, &index));
    add(configuration_agreement(trace));
    add(virtual_synchrony(trace, &index));
    add(safe_delivery(trace, &index));
    // A run cut short or stopped unsettled ended in the middle of things: what is still
    // in flight is no violation of self-delivery (liveness reports an unsettled run).
    if settled(trace) {
        add(self_delivery(trace, &index));
    }
    if !trace.outcome.aborted {
        add(liveness(trace, &index));
    }
    out
}

/// The run ended normally and quiescent (or, for traces without an end phase, was not
/// cut short): messages still in flight at the end then count as lost.
fn settled(trace: &Trace) -> bool {
    let outcome = &trace.outcome;
    !outcome.aborted && (outcome.final_heal.is_none() || outcome.quiescent_at.is_some())
}

const ABSENT: u32 = u32::MAX;

/// Dense numbering of every message id seen (submitted or delivered), and per
/// incarnation the position of each message's first delivery: built once per trace and
/// shared by the checkers.
pub struct Index {
    ids: HashMap<MsgId, u32>,
    /// Per incarnation: (record index, dense id) of each delivery with a parsed id.
    deliveries: Vec<Vec<(usize, u32)>>,
    /// Per incarnation, per dense id: record index of its first delivery, or ABSENT.
    first_delivery: Vec<Vec<u32>>,
    /// Per dense id: the Submitted record (incarnation index, record index), if any.
    submitted: Vec<Option<(usize, usize)>>,
}

impl Index {
    pub fn new(trace: &Trace) -> Index {
        let mut ids: HashMap<MsgId, u32> = HashMap::new();
        let dense = |id: MsgId, ids: &mut HashMap<MsgId, u32>| {
            let next = ids.len() as u32;
            *ids.entry(id).or_insert(next)
        };
        let mut deliveries = Vec::with_capacity(trace.incarnations.len());
        let mut submitted_at = Vec::new();
        for (i, inc) in trace.incarnations.iter().enumerate() {
            let mut list = Vec::new();
            for (r, record) in inc.records.iter().enumerate() {
                match &record.kind {
                    RecordKind::Delivered { id: Some(id), .. } => {
                        list.push((r, dense(*id, &mut ids)));
                    }
                    RecordKind::Submitted { id, .. } => {
                        submitted_at.push((dense(*id, &mut ids), i, r));
                    }
                    _ => {}
                }
            }
            deliveries.push(list);
        }
        let n = ids.len();
        let mut submitted = vec![None; n];
        for (d, i, r) in submitted_at {
            submitted[d as usize].get_or_insert((i, r));
        }
        let first_delivery = deliveries
            .iter()
            .map(|list: &Vec<(usize, u32)>| {
                let mut first = vec![ABSENT; n];
                for &(r, d) in list {
                    if first[d as usize] == ABSENT {
                        first[d as usize] = r as u32;
                    }
                }
                first
            })
            .collect();
        Index {
            ids,
            deliveries,
            first_delivery,
            submitted,
        }
    }

    fn delivered(&self, inc: usize, id: &MsgId) -> Option<usize> {
        let d = *self.ids.get(id)?;
        match self.first_delivery[inc][d as usize] {
            ABSENT => None,
            r => Some(r as usize),
        }
    }
}

fn config_of(record: &Record) -> Option<&ConfigurationChange> {
    match &record.kind {
        RecordKind::Config(c) => Some(c),
        _ => None,
    }
}

fn delivered_id(record: &Record) -> Option<MsgId> {
    match &record.kind {
        RecordKind::Delivered { id, .. } => *id,
        _ => None,
    }
}

/// (f) No message that nobody sent, and every payload intact: it parses, its length
/// and checksum match what it says and what was submitted, its sender is the submitter,
/// and a SAFE message is delivered as SAFE.
pub fn integrity(trace: &Trace, index: &Index) -> Vec<Violation> {
    let mut out = Vec::new();
    for inc in &trace.incarnations {
        for (r, record) in inc.records.iter().enumerate() {
            let RecordKind::Delivered {
                id,
                sender,
                guarantee,
                len,
                checksum,
                integrity,
                ..
            } = &record.kind
            else {
                continue;
            };
            let problem = match (id, integrity) {
                (_, Integrity::Unparseable) | (None, _) => {
                    Some("a payload that no workload message has".to_string())
                }
                (Some(id), Integrity::BadLength | Integrity::BadChecksum) => {
                    Some(format!("message {id} corrupted: {integrity:?}"))
                }
                (Some(id), Integrity::Ok) => match index.ids.get(id).and_then(|&d| {
                    index.submitted[d as usize].map(|(i, r)| &trace.incarnations[i].records[r])
                }) {
                    None => Some(format!("message {id} was never submitted")),
                    Some(Record {
                        kind:
                            RecordKind::Submitted {
                                len: sent_len,
                                checksum: sent_sum,
                                guarantee: sent_guarantee,
                                ..
                            },
                        ..
                    }) => {
                        if (sent_len, sent_sum) != (len, checksum) {
                            Some(format!("message {id} differs from the one submitted"))
                        } else if *sender != id.node {
                            Some(format!("message {id} delivered as sent by {sender}"))
                        } else if *sent_guarantee == Guarantee::Safe
                            && *guarantee != Guarantee::Safe
                        {
                            // Agreed delivered as SAFE is fine (it shared a datagram
                            // with a SAFE message); the other way round is not.
                            Some(format!(
                                "message {id} submitted {sent_guarantee:?}, delivered {guarantee:?}"
                            ))
                        } else {
                            None
                        }
                    }
                    Some(_) => unreachable!("index points at Submitted records"),
                },
            };
            if let Some(problem) = problem {
                out.push(
                    Violation::new("integrity", Some(inc), problem)
                        .with_excerpt(inc.excerpt(r, EXCERPT)),
                );
            }
        }
    }
    out
}

/// (e) No incarnation delivers a message twice.
pub fn no_duplicates(trace: &Trace, index: &Index) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, inc) in trace.incarnations.iter().enumerate() {
        for &(r, d) in &index.deliveries[i] {
            let first = index.first_delivery[i][d as usize] as usize;
            if first != r {
                let id = delivered_id(&inc.records[r]).expect("a delivery");
                out.push(
                    Violation::new(
                        "no-duplicates",
                        Some(inc),
                        format!("message {id} delivered again (first at record {first})"),
                    )
                    .with_excerpt(inc.excerpt(r, EXCERPT)),
                );
                break;
            }
        }
    }
    out
}

/// (d) Per-sender FIFO: within an incarnation, the messages of one sender incarnation
/// arrive in strictly increasing counter order (gaps are allowed: a message may be lost
/// with a configuration its receiver did not share).
pub fn sender_fifo(trace: &Trace, _index: &Index) -> Vec<Violation> {
    let mut out = Vec::new();
    for inc in &trace.incarnations {
        let mut last: BTreeMap<(NodeId, u32), u64> = BTreeMap::new();
        for (r, record) in inc.records.iter().enumerate() {
            let Some(id) = delivered_id(record) else {
                continue;
            };
            let key = (id.node, id.incarnation);
            if let Some(&prev) = last.get(&key) {
                if id.counter <= prev {
                    out.push(
                        Violation::new(
                            "sender-fifo",
                            Some(inc),
                            format!(
                                "message {id} delivered after {}#{}:{prev}",
                                id.node, id.incarnation
                            ),
                        )
                        .with_excerpt(inc.excerpt(r, EXCERPT)),
                    );
                    break;
                }
            }
            last.insert(key, id.counter);
        }
    }
    out
}

/// (a) Agreed order (Totem §2, "Agreed delivery"): any two incarnations deliver the
/// messages they both deliver in the same relative order.
pub fn agreed_order(trace: &Trace, index: &Index) -> Vec<Violation> {
    let mut out = Vec::new();
    let incs = &trace.incarnations;
    for a in 0..incs.len() {
        // Ordinal of each message in a's delivery sequence (first delivery only).
        for b in (a + 1)..incs.len() {
            let mut last: Option<(u32, usize)> = None; // (record index in a, record in b)
            for &(rb, d) in &index.deliveries[b] {
                if index.first_delivery[b][d as usize] as usize != rb {
                    continue;
                }
                let ra = index.first_delivery[a][d as usize];
                if ra == ABSENT {
                    continue;
                }
                if let Some((prev_a, prev_b)) = last {
                    if ra < prev_a {
                        let x = delivered_id(&incs[b].records[prev_b]).expect("delivery");
                        let y = delivered_id(&incs[b].records[rb]).expect("delivery");
                        let mut excerpt = incs[a].excerpt(prev_a as usize, EXCERPT / 2);
                        excerpt.extend(incs[b].excerpt(rb, EXCERPT / 2));
                        out.push(
                            Violation::new(
                                "agreed-order",
                                Some(&incs[b]),
                                format!(
                                    "{} delivered {x} before {y}, {} delivered {y} before {x}",
                                    incs[b].name(),
                                    incs[a].name()
                                ),
                            )
                            .with_excerpt(excerpt),
                        );
                        break;
                    }
                }
                last = Some((ra, rb));
            }
            if out.len() >= MAX_PER_CHECKER {
                return out;
            }
        }
    }
    out
}

/// A configuration as the checkers compare them.
type ConfigKey = (bool, RingId, Vec<NodeId>);

fn key(c: &ConfigurationChange) -> ConfigKey {
    (
        c.kind == ConfigurationKind::Regular,
        c.ring_id,
        c.members.clone(),
    )
}

/// (b) Extended virtual synchrony (Totem §5; Moser et al. 1994): incarnations that
/// install the same configuration and then the same next configuration delivered the
/// same set of messages between the two. Applied to every consecutive pair, so it
/// covers regular → transitional (messages of the regular configuration) and
/// transitional → regular (messages delivered in the transitional one).
pub fn virtual_synchrony(trace: &Trace, index: &Index) -> Vec<Violation> {
    type Segment = (usize, usize, usize, Vec<u32>); // (incarnation, from, to, sorted ids)
    let mut groups: BTreeMap<(ConfigKey, ConfigKey), Vec<Segment>> = BTreeMap::new();
    for (i, inc) in trace.incarnations.iter().enumerate() {
        let configs: Vec<usize> = (0..inc.records.len())
            .filter(|&r| config_of(&inc.records[r]).is_some())
            .collect();
        let deliveries = &index.deliveries[i];
        for pair in configs.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let start = deliveries.partition_point(|&(r, _)| r < from);
            let end = deliveries.partition_point(|&(r, _)| r < to);
            let mut ids: Vec<u32> = deliveries[start..end].iter().map(|&(_, d)| d).collect();
            ids.sort_unstable();
            ids.dedup();
            let k = (
                key(config_of(&inc.records[from]).expect("config")),
                key(config_of(&inc.records[to]).expect("config")),
            );
            groups.entry(k).or_default().push((i, from, to, ids));
        }
    }
    let names: BTreeMap<u32, MsgId> = index.ids.iter().map(|(id, &d)| (d, *id)).collect();
    let mut out = Vec::new();
    for ((from_key, to_key), segments) in &groups {
        let (i0, _, _, ref first) = segments[0];
        for (i, _, to, ids) in &segments[1..] {
            if ids == first {
                continue;
            }
            let only_a: Vec<String> = first
                .iter()
                .filter(|d| ids.binary_search(d).is_err())
                .take(5)
                .map(|d| names[d].to_string())
                .collect();
            let only_b: Vec<String> = ids
                .iter()
                .filter(|d| first.binary_search(d).is_err())
                .take(5)
                .map(|d| names[d].to_string())
                .collect();
            let (a, b) = (&trace.incarnations[i0], &trace.incarnations[*i]);
            let kind = |regular: bool| if regular { "regular" } else { "transitional" };
            let mut excerpt = a.excerpt(segments[0].2, EXCERPT / 2);
            excerpt.extend(b.excerpt(*to, EXCERPT / 2));
            out.push(
                Violation::new(
                    "virtual-synchrony",
                    Some(b),
                    format!(
                        "{} and {} both went from {} {} to {} {} {:?} but delivered \
                         different messages: only {}: {:?}, only {}: {:?}",
                        a.name(),
                        b.name(),
                        kind(from_key.0),
                        from_key.1,
                        kind(to_key.0),
                        to_key.1,
                        to_key.2,
                        a.name(),
                        only_a,
                        b.name(),
                        only_b
                    ),
                )
                .with_excerpt(excerpt),
            );
            break;
        }
    }
    out
}

/// (c) Self-delivery: an incarnation that did not crash or leave delivers every
/// message it submitted successfully.
pub fn self_delivery(trace: &Trace, index: &Index) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, inc) in trace.incarnations.iter().enumerate() {
        if !inc.alive_at_end() {
            continue;
        }
        let mut missing = Vec::new();
        let mut first_missing = None;
        for (r, record) in inc.records.iter().enumerate() {
            if let RecordKind::Submitted { id, .. } = &record.kind {
                if index.delivered(i, id).is_none() {
                    missing.push(*id);
                    first_missing.get_or_insert(r);
                }
            }
        }
        if let Some(r) = first_missing {
            let shown: Vec<String> = missing.iter().take(5).map(|id| id.to_string()).collect();
            out.push(
                Violation::new(
                    "self-delivery",
                    Some(inc),
                    format!(
                        "{} of its own messages never delivered to it, first: {shown:?}",
                        missing.len()
                    ),
                )
                .with_excerpt(inc.excerpt(r, EXCERPT)),
            );
        }
    }
    out
}

/// (g) Safe delivery (Totem §2, "Safe delivery"): a SAFE message delivered by X in
/// regular configuration C is delivered by every incarnation that installed C, in C or
/// in the transitional configuration after it, unless that incarnation crashed or left
/// before installing the next regular configuration.
pub fn safe_delivery(trace: &Trace, index: &Index) -> Vec<Violation> {
    let incs = &trace.incarnations;
    // Regular ring id → (incarnation, record index of its installation, record index of
    // the next regular installation or None).
    let mut installs: BTreeMap<RingId, Vec<(usize, usize, Option<usize>)>> = BTreeMap::new();
    for (i, inc) in incs.iter().enumerate() {
        let regulars: Vec<usize> = (0..inc.records.len())
            .filter(|&r| {
                config_of(&inc.records[r]).is_some_and(|c| c.kind == ConfigurationKind::Regular)
            })
            .collect();
        for (k, &r) in regulars.iter().enumerate() {
            let ring = config_of(&inc.records[r]).expect("config").ring_id;
            installs
                .entry(ring)
                .or_default()
                .push((i, r, regulars.get(k + 1).copied()));
        }
    }
    let mut out = Vec::new();
    let mut checked = BTreeSet::new();
    for (x, inc) in incs.iter().enumerate() {
        let mut current: Option<&ConfigurationChange> = None;
        for (r, record) in inc.records.iter().enumerate() {
            match &record.kind {
                RecordKind::Config(c) => current = Some(c),
                RecordKind::Delivered {
                    id: Some(id),
                    guarantee: Guarantee::Safe,
                    ..
                } => {
                    let Some(c) = current.filter(|c| c.kind == ConfigurationKind::Regular) else {
                        continue;
                    };
                    if !checked.insert((c.ring_id, *id)) {
                        continue;
                    }
                    for &(y, installed, next) in installs.get(&c.ring_id).into_iter().flatten() {
                        if y == x {
                            continue;
                        }
                        let other = &incs[y];
                        let until = match next {
                            Some(next) => next,
                            // C is still current at the end: its members owe the
                            // message only if the run settled (a run cut off while
                            // delivering is the liveness checker's to report).
                            None if other.alive_at_end()
                                && !trace.outcome.aborted
                                && trace.outcome.quiescent_at.is_some() =>
                            {
                                other.records.len()
                            }
                            None => continue,
                        };
                        let ok = index
                            .delivered(y, id)
                            .is_some_and(|at| at > installed && at < until);
                        if !ok {
                            let mut excerpt = inc.excerpt(r, EXCERPT / 2);
                            excerpt.extend(other.excerpt(until.saturating_sub(1), EXCERPT / 2));
                            out.push(
                                Violation::new(
                                    "safe-delivery",
                                    Some(other),
                                    format!(
                                        "SAFE message {id} delivered by {} in regular \
                                         configuration {} but not by member {} in it or \
                                         its transitional configuration",
                                        inc.name(),
                                        c.ring_id,
                                        other.name()
                                    ),
                                )
                                .with_excerpt(excerpt),
                            );
                            if out.len() >= MAX_PER_CHECKER {
                                return out;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// (h) Configuration agreement (Totem §4; docs/cpg.md §9.6): incarnations that install
/// a regular configuration with the same ring id list the same members; every node is
/// a member of its own configurations; the representative is the lowest member; a
/// transitional configuration is made of members of the regular configuration before
/// it and of the one after it, `left` and `joined` say what changed, configurations
/// alternate transitional → regular, and ring sequences grow.
pub fn configuration_agreement(trace: &Trace) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut regular_members: BTreeMap<RingId, (Vec<NodeId>, String)> = BTreeMap::new();
    for inc in &trace.incarnations {
        let mut prev_regular: Option<&ConfigurationChange> = None;
        let mut pending_transitional: Option<&ConfigurationChange> = None;
        let fail = |r: usize, why: String, out: &mut Vec<Violation>| {
            out.push(
                Violation::new("configuration", Some(inc), why)
                    .with_excerpt(inc.excerpt(r, EXCERPT)),
            );
        };
        let before = out.len();
        for (r, record) in inc.records.iter().enumerate() {
            let Some(c) = config_of(record) else {
                continue;
            };
            if out.len() > before {
                break;
            }
            if !c.members.contains(&inc.node) {
                fail(r, "not a member of its own configuration".into(), &mut out);
                continue;
            }
            if !c.members.windows(2).all(|w| w[0] < w[1]) {
                fail(r, "members not sorted and unique".into(), &mut out);
                continue;
            }
            match c.kind {
                ConfigurationKind::Transitional => {
                    if pending_transitional.is_some() {
                        fail(
                            r,
                            "two transitional configurations in a row".into(),
                            &mut out,
                        );
                        continue;
                    }
                    let previous: Vec<NodeId> = match prev_regular {
                        Some(p) => p.members.clone(),
                        None => vec![inc.node],
                    };
                    if let Some(stranger) = c.members.iter().find(|m| !previous.contains(m)) {
                        fail(
                            r,
                            format!(
                                "transitional member {stranger} was not in the previous regular \
                                 configuration {previous:?}"
                            ),
                            &mut out,
                        );
                        continue;
                    }
                    let left: Vec<NodeId> = previous
                        .iter()
                        .copied()
                        .filter(|m| !c.members.contains(m))
                        .collect();
                    if prev_regular.is_some() && left != c.left {
                        fail(
                            r,
                            format!("transitional left {:?}, expected {left:?}", c.left),
                            &mut out,
                        );
                        continue;
                    }
                    if !c.joined.is_empty() {
                        fail(r, "transitional configuration with joined".into(), &mut out);
                        continue;
                    }
                    pending_transitional = Some(c);
                }
                ConfigurationKind::Regular => {
                    let Some(t) = pending_transitional.take() else {
                        fail(
                            r,
                            "regular configuration without a transitional one before it".into(),
                            &mut out,
                        );
                        continue;
                    };
                    if let Some(stranger) = t.members.iter().find(|m| !c.members.contains(m)) {
                        fail(
                            r,
                            format!("transitional member {stranger} is not in the new ring"),
                            &mut out,
                        );
                        continue;
                    }
                    let joined: Vec<NodeId> = c
                        .members
                        .iter()
                        .copied()
                        .filter(|m| !t.members.contains(m))
                        .collect();
                    if joined != c.joined || !c.left.is_empty() {
                        fail(
                            r,
                            format!(
                                "regular joined {:?} left {:?}, expected joined {joined:?}",
                                c.joined, c.left
                            ),
                            &mut out,
                        );
                        continue;
                    }
                    if c.members.first() != Some(&c.ring_id.rep) {
                        fail(
                            r,
                            "ring representative is not the lowest member".into(),
                            &mut out,
                        );
                        continue;
                    }
                    if let Some(p) = prev_regular {
                        if c.ring_id.seq <= p.ring_id.seq {
                            fail(
                                r,
                                format!("ring {} after ring {}", c.ring_id, p.ring_id),
                                &mut out,
                            );
                            continue;
                        }
                    }
                    match regular_members.get(&c.ring_id) {
                        Some((members, who)) if *members != c.members => fail(
                            r,
                            format!(
                                "ring {} installed with members {:?}, but {who} installed it \
                                 with {members:?}",
                                c.ring_id, c.members
                            ),
                            &mut out,
                        ),
                        Some(_) => {}
                        None => {
                            regular_members.insert(c.ring_id, (c.members.clone(), inc.name()));
                        }
                    }
                    prev_regular = Some(c);
                }
            }
        }
    }
    out
}

/// (i) Liveness (docs/invariants.md guarantee 5): within the settle bound after the final heal,
/// the cluster is quiescent (every node operational in one ring of all nodes, send
/// queues empty); at the end every live incarnation's last configuration is that ring;
/// and every message a live incarnation submitted after installing it was delivered by
/// every live incarnation.
pub fn liveness(trace: &Trace, index: &Index) -> Vec<Violation> {
    let mut out = Vec::new();
    let outcome = &trace.outcome;
    let Some(heal) = outcome.final_heal else {
        return out;
    };
    let live: Vec<usize> = (0..trace.incarnations.len())
        .filter(|&i| trace.incarnations[i].alive_at_end())
        .collect();
    if outcome.quiescent_at.is_none() {
        let mut v = Violation::new(
            "liveness",
            None,
            format!(
                "not quiescent within {:?} after the final heal at {}",
                outcome.settle_limit,
                super::trace::fmt_instant(heal)
            ),
        );
        v.excerpt = outcome.final_states.clone();
        for &i in &live {
            v.excerpt.extend(trace.incarnations[i].tail(3));
        }
        out.push(v);
    }
    let all: Vec<NodeId> = (1..=trace.nodes as NodeId).collect();
    let mut final_ring: Option<RingId> = None;
    let mut last_config = BTreeMap::new();
    for &i in &live {
        let inc = &trace.incarnations[i];
        let last = (0..inc.records.len())
            .rev()
            .find(|&r| config_of(&inc.records[r]).is_some());
        let ok = last.is_some_and(|r| {
            let c = config_of(&inc.records[r]).expect("config");
            let same = *final_ring.get_or_insert(c.ring_id) == c.ring_id;
            c.kind == ConfigurationKind::Regular && c.members == all && same
        });
        if !ok {
            out.push(
                Violation::new(
                    "liveness",
                    Some(inc),
                    format!("does not end in one regular configuration of all nodes {all:?}"),
                )
                .with_excerpt(inc.tail(EXCERPT)),
            );
            return out;
        }
        last_config.insert(i, last.expect("checked"));
    }
    for &i in &live {
        let inc = &trace.incarnations[i];
        for (r, record) in inc.records.iter().enumerate().skip(last_config[&i] + 1) {
            let RecordKind::Submitted { id, .. } = &record.kind else {
                continue;
            };
            for &j in &live {
                if index.delivered(j, id).is_none() {
                    let other = &trace.incarnations[j];
                    let mut excerpt = inc.excerpt(r, EXCERPT / 2);
                    excerpt.extend(other.tail(EXCERPT / 2));
                    out.push(
                        Violation::new(
                            "liveness",
                            Some(other),
                            format!(
                                "message {id}, submitted in the final configuration, never \
                                 delivered by {}",
                                other.name()
                            ),
                        )
                        .with_excerpt(excerpt),
                    );
                    return out;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
