//! The delivery log, a test hook (feature `test-hooks`): an engine appends what its
//! load generator submitted and what it delivered, and every configuration change, to
//! a file, so that a test can check the guarantees across processes with the
//! simulator's checkers (docs/invariants.md). Off unless configured
//! (`delivery_log = "FILE"`, `--delivery-log FILE`); absent from the default build.
//!
//! One text line per record, appended, so that a restarted engine continues the same
//! file; every start writes a header record first (on a line of its own):
//!
//! ```text
//! H <node> <epoch> <pid>;                                   an engine start
//! S <t_ns> <seq> <len> <checksum>;                          a generated message submitted
//! D <t_ns> <sender> <ring> <A|S> <gen> <len> <checksum>;    a delivery
//! C <t_ns> <T|R> <ring> <members> <left> <joined>;          a configuration change
//! ```
//!
//! `<epoch>` is the start's load-generator epoch (see [`super::load`]); `<gen>` is
//! `<node>/<epoch>/<seq>` from a generated message's header, `-` for any other payload;
//! `<ring>` is `rep.seq`; node lists are comma-separated, `-` when empty; `<checksum>` is
//! [`ringcast_sim::workload::checksum`] of the whole payload; `<t_ns>` is the engine's clock
//! (ns since that start: comparable within one start only).
//!
//! Records are buffered (at most [`BUFFER_BYTES`] and one record) and written when the
//! buffer fills, at least every [`FLUSH_INTERVAL`] while records wait, and on exit. A
//! `kill -9` loses at most the records of the last interval and may cut the last line:
//! every record ends with `;` so that a cut line is recognisable, and the reader accepts
//! one only as the last line of a start.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::Generated;
use crate::totem::{
    ConfigurationChange, ConfigurationKind, Delivery, Guarantee, Instant, NodeId, RingId,
};
use ringcast_sim::trace::{End, Incarnation, Integrity, MsgId, Record, RecordKind, Trace};
use ringcast_sim::workload::checksum;

/// Records wait in memory up to this many bytes.
pub const BUFFER_BYTES: usize = 64 << 10;
/// Waiting records are written at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Appends records to the log file of one engine start.
#[derive(Debug)]
pub struct DeliveryLog {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    last_flush: Instant,
}

fn write_nodes(out: &mut Vec<u8>, nodes: &[NodeId]) {
    if nodes.is_empty() {
        out.push(b'-');
    }
    for (i, node) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{node}");
    }
}

impl DeliveryLog {
    /// Opens `path` for appending (creating it) and writes the header of this start.
    pub fn open(
        path: &Path,
        node: NodeId,
        epoch: u64,
        now: Instant,
    ) -> std::io::Result<DeliveryLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut log = DeliveryLog {
            path: path.to_owned(),
            file,
            buf: Vec::with_capacity(BUFFER_BYTES + 256),
            last_flush: now,
        };
        // The leading newline ends a line a killed predecessor may have cut.
        let _ = writeln!(log.buf, "\nH {node} {epoch} {};", std::process::id());
        log.flush(now)?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A generated message was accepted by `submit`.
    pub fn submitted(&mut self, now: Instant, payload: &[u8]) -> std::io::Result<()> {
        let seq = Generated::parse(payload).map_or(0, |g| g.seq);
        let _ = writeln!(
            self.buf,
            "S {} {seq} {} {};",
            now.as_nanos(),
            payload.len(),
            checksum(payload)
        );
        self.flush_if_full(now)
    }

    pub fn delivered(&mut self, now: Instant, delivery: &Delivery) -> std::io::Result<()> {
        let guarantee = match delivery.guarantee {
            Guarantee::Agreed => 'A',
            Guarantee::Safe => 'S',
        };
        let _ = write!(
            self.buf,
            "D {} {} {} {guarantee} ",
            now.as_nanos(),
            delivery.sender,
            delivery.ring_id
        );
        let _ = match Generated::parse(&delivery.payload) {
            Some(g) => write!(self.buf, "{}/{}/{}", g.sender, g.epoch, g.seq),
            None => write!(self.buf, "-"),
        };
        let _ = writeln!(
            self.buf,
            " {} {};",
            delivery.payload.len(),
            checksum(&delivery.payload)
        );
        self.flush_if_full(now)
    }

    pub fn configuration(
        &mut self,
        now: Instant,
        change: &ConfigurationChange,
    ) -> std::io::Result<()> {
        let kind = match change.kind {
            ConfigurationKind::Transitional => 'T',
            ConfigurationKind::Regular => 'R',
        };
        let _ = write!(self.buf, "C {} {kind} {} ", now.as_nanos(), change.ring_id);
        write_nodes(&mut self.buf, &change.members);
        self.buf.push(b' ');
        write_nodes(&mut self.buf, &change.left);
        self.buf.push(b' ');
        write_nodes(&mut self.buf, &change.joined);
        self.buf.extend_from_slice(b";\n");
        self.flush_if_full(now)
    }

    fn flush_if_full(&mut self, now: Instant) -> std::io::Result<()> {
        if self.buf.len() >= BUFFER_BYTES {
            self.flush(now)?;
        }
        Ok(())
    }

    /// When waiting records must be written (None when nothing waits).
    pub fn next_flush(&self) -> Option<Instant> {
        (!self.buf.is_empty()).then(|| self.last_flush + FLUSH_INTERVAL)
    }

    /// Writes waiting records if [`FLUSH_INTERVAL`] has passed.
    pub fn tick(&mut self, now: Instant) -> std::io::Result<()> {
        if self.next_flush().is_some_and(|at| at <= now) {
            self.flush(now)?;
        }
        Ok(())
    }

    /// Writes every waiting record.
    pub fn flush(&mut self, now: Instant) -> std::io::Result<()> {
        self.last_flush = now;
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf);
        // Written or not, the buffer stays bounded; the caller stops logging on an error.
        self.buf.clear();
        result
    }
}

impl Drop for DeliveryLog {
    fn drop(&mut self) {
        // Best effort on an error exit; a clean exit has flushed already.
        let _ = self.file.write_all(&self.buf);
    }
}

/// A record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logged {
    Submitted {
        at: Instant,
        seq: u64,
        len: usize,
        checksum: u64,
    },
    Delivered {
        at: Instant,
        sender: NodeId,
        ring_id: RingId,
        guarantee: Guarantee,
        /// The generated message's header, if it is one.
        generated: Option<Generated>,
        len: usize,
        checksum: u64,
    },
    Config {
        at: Instant,
        change: ConfigurationChange,
    },
}

/// The records of one engine start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedStart {
    pub node: NodeId,
    pub epoch: u64,
    pub pid: u32,
    pub records: Vec<Logged>,
    /// Its last line was cut (the engine was killed while writing it).
    pub cut: bool,
}

impl LoggedStart {
    pub fn deliveries(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r, Logged::Delivered { .. }))
            .count()
    }

    pub fn submits(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r, Logged::Submitted { .. }))
            .count()
    }

    pub fn configurations(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r, Logged::Config { .. }))
            .count()
    }
}

/// A log that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A line is not a record, and not the cut last line of a start.
    #[error("line {line}: {why}: {text:?}")]
    Malformed {
        line: usize,
        why: &'static str,
        text: String,
    },
}

fn parse_nodes(field: &str) -> Option<Vec<NodeId>> {
    if field == "-" {
        return Some(Vec::new());
    }
    field.split(',').map(|n| n.parse().ok()).collect()
}

fn parse_ring(field: &str) -> Option<RingId> {
    let (rep, seq) = field.split_once('.')?;
    Some(RingId {
        rep: rep.parse().ok()?,
        seq: seq.parse().ok()?,
    })
}

fn parse_generated(field: &str) -> Option<Option<Generated>> {
    if field == "-" {
        return Some(None);
    }
    let mut parts = field.split('/');
    let generated = Generated {
        sender: parts.next()?.parse().ok()?,
        epoch: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(Some(generated))
}

enum Line {
    Header(NodeId, u64, u32),
    Record(Logged),
}

fn parse_line(line: &str) -> Option<Line> {
    let body = line.strip_suffix(';')?;
    let fields: Vec<&str> = body.split(' ').collect();
    let at = |i: usize| -> Option<Instant> { Some(Instant::from_nanos(fields[i].parse().ok()?)) };
    let parsed = match (fields[0], fields.len()) {
        ("H", 4) => Line::Header(
            fields[1].parse().ok()?,
            fields[2].parse().ok()?,
            fields[3].parse().ok()?,
        ),
        ("S", 5) => Line::Record(Logged::Submitted {
            at: at(1)?,
            seq: fields[2].parse().ok()?,
            len: fields[3].parse().ok()?,
            checksum: fields[4].parse().ok()?,
        }),
        ("D", 8) => Line::Record(Logged::Delivered {
            at: at(1)?,
            sender: fields[2].parse().ok()?,
            ring_id: parse_ring(fields[3])?,
            guarantee: match fields[4] {
                "A" => Guarantee::Agreed,
                "S" => Guarantee::Safe,
                _ => return None,
            },
            generated: parse_generated(fields[5])?,
            len: fields[6].parse().ok()?,
            checksum: fields[7].parse().ok()?,
        }),
        ("C", 7) => Line::Record(Logged::Config {
            at: at(1)?,
            change: ConfigurationChange {
                kind: match fields[2] {
                    "T" => ConfigurationKind::Transitional,
                    "R" => ConfigurationKind::Regular,
                    _ => return None,
                },
                ring_id: parse_ring(fields[3])?,
                members: parse_nodes(fields[4])?,
                left: parse_nodes(fields[5])?,
                joined: parse_nodes(fields[6])?,
            },
        }),
        _ => return None,
    };
    Some(parsed)
}

/// Reads a log file's text: its starts in the order they were written.
pub fn parse(text: &str) -> Result<Vec<LoggedStart>, LogError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let mut starts: Vec<LoggedStart> = Vec::new();
    for (k, &(number, line)) in lines.iter().enumerate() {
        let malformed = |why| LogError::Malformed {
            line: number + 1,
            why,
            text: line.to_owned(),
        };
        match parse_line(line) {
            Some(Line::Header(node, epoch, pid)) => starts.push(LoggedStart {
                node,
                epoch,
                pid,
                records: Vec::new(),
                cut: false,
            }),
            Some(Line::Record(record)) => match starts.last_mut() {
                Some(start) if !start.cut => start.records.push(record),
                Some(_) => return Err(malformed("a record after a cut line")),
                None => return Err(malformed("a record before the first header")),
            },
            None => {
                let last_of_start = lines
                    .get(k + 1)
                    .is_none_or(|(_, next)| next.starts_with("H "));
                match starts.last_mut() {
                    Some(start) if last_of_start && !line.ends_with(';') => start.cut = true,
                    _ => return Err(malformed("not a record")),
                }
            }
        }
    }
    Ok(starts)
}

/// Turns the logs of every start of every node (each node's starts in file order) into a
/// simulator [`Trace`] for [`ringcast_sim::checker`]: each start is an incarnation,
/// numbered per node from 0; a generated message's id is (its header's node, the
/// incarnation whose epoch it carries, its seq). A start followed by another start of the
/// same node, or of a node in `ended`, ended (as a crash). The outcome is left at its
/// default (no liveness judgement): the caller sets it.
///
/// An ended start's log may lack its last records (a `kill -9` between two flushes): its
/// own messages delivered elsewhere with a higher seq than the last it logged are given
/// a Submitted record at its end, built from a delivery. A missing submit below that is
/// still reported by the integrity checker.
pub fn to_trace(nodes: usize, starts: &[LoggedStart], ended: &[NodeId]) -> Trace {
    let mut numbers: HashMap<NodeId, u32> = HashMap::new();
    let mut incarnation_of: HashMap<(NodeId, u64), u32> = HashMap::new();
    let mut last_start: HashMap<NodeId, usize> = HashMap::new();
    let numbered: Vec<u32> = starts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let number = numbers.entry(s.node).or_insert(0);
            let this = *number;
            *number += 1;
            incarnation_of.insert((s.node, s.epoch), this);
            last_start.insert(s.node, i);
            this
        })
        .collect();
    let id_of = |g: &Generated| MsgId {
        node: g.sender,
        incarnation: incarnation_of
            .get(&(g.sender, g.epoch))
            .copied()
            .unwrap_or(u32::MAX),
        counter: g.seq,
    };

    let mut trace = Trace {
        nodes,
        ..Trace::default()
    };
    for (i, start) in starts.iter().enumerate() {
        let mut inc = Incarnation::new(start.node, numbered[i], Instant::ZERO);
        let mut last_at = Instant::ZERO;
        for logged in &start.records {
            let (at, kind) = match logged {
                Logged::Submitted {
                    at,
                    seq,
                    len,
                    checksum,
                } => (
                    *at,
                    RecordKind::Submitted {
                        id: MsgId {
                            node: start.node,
                            incarnation: numbered[i],
                            counter: *seq,
                        },
                        len: *len,
                        checksum: *checksum,
                        guarantee: Guarantee::Agreed,
                    },
                ),
                Logged::Delivered {
                    at,
                    sender,
                    ring_id,
                    guarantee,
                    generated,
                    len,
                    checksum,
                } => (
                    *at,
                    RecordKind::Delivered {
                        id: generated.as_ref().map(id_of),
                        sender: *sender,
                        ring_id: *ring_id,
                        guarantee: *guarantee,
                        len: *len,
                        checksum: *checksum,
                        integrity: if generated.is_some() {
                            Integrity::Ok
                        } else {
                            Integrity::Unparseable
                        },
                    },
                ),
                Logged::Config { at, change } => (*at, RecordKind::Config(change.clone())),
            };
            last_at = at;
            inc.records.push(Record { at, kind });
        }
        if last_start[&start.node] != i || ended.contains(&start.node) {
            inc.end = Some(End::Crashed(last_at));
        }
        trace.incarnations.push(inc);
    }

    // Submits an ended start did not get to write.
    let mut first_delivery: BTreeMap<MsgId, (usize, u64)> = BTreeMap::new();
    for inc in &trace.incarnations {
        for record in &inc.records {
            if let RecordKind::Delivered {
                id: Some(id),
                len,
                checksum,
                ..
            } = record.kind
            {
                first_delivery.entry(id).or_insert((len, checksum));
            }
        }
    }
    for inc in trace.incarnations.iter_mut().filter(|i| !i.alive_at_end()) {
        let last_logged = inc
            .records
            .iter()
            .filter_map(|r| match r.kind {
                RecordKind::Submitted { id, .. } => Some(id.counter),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let at = inc.records.last().map_or(Instant::ZERO, |r| r.at);
        let lost: Vec<(MsgId, (usize, u64))> = first_delivery
            .range(
                MsgId {
                    node: inc.node,
                    incarnation: inc.number,
                    counter: last_logged + 1,
                }..=MsgId {
                    node: inc.node,
                    incarnation: inc.number,
                    counter: u64::MAX,
                },
            )
            .map(|(id, v)| (*id, *v))
            .collect();
        for (id, (len, checksum)) in lost {
            inc.records.push(Record {
                at,
                kind: RecordKind::Submitted {
                    id,
                    len,
                    checksum,
                    guarantee: Guarantee::Agreed,
                },
            });
        }
    }
    trace
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::LoadSettings;
    use crate::daemon::load::LoadGenerator;
    use ringcast_sim::checker;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-delivery-log-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ring(rep: NodeId, seq: u64) -> RingId {
        RingId { rep, seq }
    }

    /// A configuration as `node` installs it when it joins `members` from a singleton.
    fn config(
        node: NodeId,
        kind: ConfigurationKind,
        r: RingId,
        members: &[NodeId],
    ) -> ConfigurationChange {
        ConfigurationChange {
            kind,
            ring_id: r,
            members: members.to_vec(),
            left: Vec::new(),
            joined: members.iter().copied().filter(|m| *m != node).collect(),
        }
    }

    fn generator(node: NodeId, epoch: u64) -> LoadGenerator {
        let settings = LoadSettings {
            size_bytes: 40,
            rate_per_s: 0,
            count: 0,
        };
        LoadGenerator::new(&settings, node, epoch).unwrap()
    }

    /// Two nodes that deliver the same messages in the same order: the log reads back
    /// as written, and the checkers find nothing.
    #[test]
    fn round_trip_and_a_clean_trace() {
        let dir = dir("round-trip");
        let r = ring(1, 4);
        let mut messages = Vec::new();
        let mut gens = [generator(1, 11), generator(2, 22)];
        for _ in 0..3 {
            for g in &mut gens {
                messages.push(g.next(Instant::ZERO).unwrap());
            }
        }
        let mut starts = Vec::new();
        for node in [1, 2] {
            let path = dir.join(format!("log{node}"));
            let epoch = [11, 22][node as usize - 1];
            let mut log = DeliveryLog::open(&path, node, epoch, Instant::ZERO).unwrap();
            let t = |n: u64| Instant::from_nanos(n);
            log.configuration(
                t(1),
                &config(node, ConfigurationKind::Transitional, r, &[node]),
            )
            .unwrap();
            log.configuration(t(2), &config(node, ConfigurationKind::Regular, r, &[1, 2]))
                .unwrap();
            for m in messages
                .iter()
                .filter(|m| Generated::parse(m).unwrap().sender == node)
            {
                log.submitted(t(3), m).unwrap();
            }
            for m in &messages {
                let sender = Generated::parse(m).unwrap().sender;
                let delivery = Delivery {
                    sender,
                    ring_id: r,
                    guarantee: Guarantee::Agreed,
                    payload: m.clone(),
                };
                log.delivered(t(4), &delivery).unwrap();
            }
            assert!(log.next_flush().is_some());
            log.tick(t(5)).unwrap();
            assert!(log.next_flush().is_some(), "not due yet");
            log.tick(Instant::ZERO + FLUSH_INTERVAL + Duration::from_nanos(5))
                .unwrap();
            assert_eq!(log.next_flush(), None, "flushed when due");
            drop(log);
            let parsed = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!((parsed[0].node, parsed[0].epoch), (node, epoch));
            assert_eq!(parsed[0].deliveries(), 6);
            assert_eq!(parsed[0].submits(), 3);
            assert_eq!(parsed[0].configurations(), 2);
            assert!(!parsed[0].cut);
            starts.extend(parsed);
        }
        let mut trace = to_trace(2, &starts, &[]);
        trace.outcome.final_heal = Some(Instant::ZERO);
        trace.outcome.quiescent_at = Some(Instant::ZERO);
        assert_eq!(checker::check_all(&trace), Vec::new());

        // Node 2 delivering two messages the other way round breaks agreed order.
        let mut swapped = starts.clone();
        let records = &mut swapped[1].records;
        let first = records
            .iter()
            .position(|r| matches!(r, Logged::Delivered { .. }))
            .unwrap();
        records.swap(first, first + 1);
        let found = checker::check_all(&to_trace(2, &swapped, &[]));
        assert!(
            found.iter().any(|v| v.checker == "agreed-order"),
            "{found:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A killed engine's cut last line is accepted at the end of its start and nowhere
    /// else; its unwritten submits are filled in from deliveries elsewhere.
    #[test]
    fn cut_lines_and_lost_submits() {
        let m = generator(1, 5).next(Instant::ZERO).unwrap();
        let sum = checksum(&m);
        let text = format!(
            "\nH 1 5 100;\nC 1 T 1.2 1 - -;\nC 2 R 1.2 1,2 - 2;\nD 3 1 1.2 A 1/5/1 40 {sum}\n\
             H 1 6 101;\nC 1 T 1.3 1 - -;\n"
        );
        let starts = parse(&text).unwrap();
        assert_eq!(starts.len(), 2);
        assert!(starts[0].cut);
        assert_eq!(starts[0].deliveries(), 0, "the cut delivery is dropped");
        assert!(!starts[1].cut);
        let bad = "\nH 1 5 100;\nD 3 1 1.2 A - 40 7\nC 1 T 1.3 1 - -;\n";
        assert!(parse(bad).is_err(), "a cut line in the middle of a start");
        assert!(parse("S 1 1 40 7;\n").is_err(), "a record before a header");

        // Node 2 delivered node 1's first message; node 1 logged neither its submit nor
        // its delivery before it was killed.
        let node2 = parse(&format!(
            "\nH 2 9 102;\nC 1 T 1.2 2 - -;\nC 2 R 1.2 1,2 - 1;\nD 3 1 1.2 A 1/5/1 40 {sum};\n"
        ))
        .unwrap();
        let all = [starts[0].clone(), node2[0].clone()];
        let trace = to_trace(2, &all, &[1]);
        assert!(!trace.incarnations[0].alive_at_end());
        assert!(trace.incarnations[0].records.iter().any(|r| matches!(
            r.kind,
            RecordKind::Submitted { id, .. } if id.counter == 1
        )));
        let found = checker::check_all(&trace);
        assert!(found.iter().all(|v| v.checker != "integrity"), "{found:?}");
    }
}
