//! Real `ringcastd` processes on 127.0.0.x.
//!
//! Every test uses its own UDP port and state directories, the backoff idle strategy
//! and short timers (token 300 ms, no per-node scaling), waits with a deadline, and
//! kills its children when it ends (also on panic). The ring is observed through the
//! engines' shared-memory stats pages (what `ringcast status` prints).
//!
//! The fault tests run the engines' load generator during the faults with a delivery
//! log on (`--delivery-log`), stop it (SIGUSR2), wait until the cluster is quiescent and
//! every log complete, and check all logs together ([`Cluster::check_guarantees`]) with
//! the simulator's checkers (agreed order, EVS, per-sender FIFO, no duplicates,
//! integrity, self-delivery, configuration agreement, liveness) and
//! [`no_loss_to_survivors`].

use bytes::Bytes;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::checked::*;
use common::netns::*;
use common::*;

use ringcast_engine::daemon::keyfile::{self, counter_from_clock};
use ringcast_engine::wire::seal::{Key, OpenError, Opener, Sealer};
use ringcast_engine::wire::{CommitEntry, CommitToken, Join, Mcast, Packet, Recovered, Token};

/// docs/cpg.md §9.6 "Startup": a lone node forms a singleton ring; SIGTERM leaves it
/// cleanly and exits 0.
#[test]
fn one_node_forms_a_ring_and_exits_zero_on_sigterm() {
    let mut cluster = Cluster::new("one", free_port(1), 1);
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    assert!(cluster.log(1).contains("membership"), "{}", cluster.log(1));
    cluster.daemon(1).signal(libc::SIGTERM);
    let status = cluster.daemon(1).wait_exit(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", cluster.log(1));
    assert!(cluster.log(1).contains("left the ring"));
}

/// Three nodes form one ring; `kill -9` one and the survivors form a ring of two within
/// token + consensus (+ slack for a loaded machine); restarted, it rejoins (docs/cpg.md
/// §9.5 "Loss", §9.6). The messages generated throughout keep the guarantees (Totem §2,
/// §5: agreed order, EVS; no loss to nodes 1 and 2).
#[test]
fn three_nodes_survive_a_crash_and_a_restart() {
    let mut cluster = Cluster::new("three", free_port(3), 3).with_key();
    with_checked_load(&mut cluster, 200);
    cluster.start_all();
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(1, 100);

    cluster.kill9(3);
    let reformed = cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    eprintln!("survivors re-formed in {reformed:?}");
    assert_reformed_in_time(reformed);

    cluster.start(3);
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();

    // Messages flow on the new ring and nobody saw one out of order.
    let before = cluster.counter(1, "load_delivered");
    assert!(
        wait_for(Duration::from_secs(10), || cluster
            .counter(1, "load_delivered")
            > before + 50),
        "no deliveries on the new ring"
    );
    for id in 1..=3 {
        assert_eq!(cluster.counter(id, "load_out_of_order"), 0, "node {id}");
        assert_eq!(cluster.counter(id, "drop_auth"), 0, "node {id}");
        assert!(cluster.counter(id, "membership_changes") >= 1);
    }
    cluster.stop_load_and_settle(&[1, 2, 3]);
    cluster.check_guarantees(&[1, 2]);
    for id in 1..=3 {
        cluster.daemon(id).signal(libc::SIGTERM);
    }
    for id in 1..=3 {
        let status = cluster.daemon(id).wait_exit(Duration::from_secs(5));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "node {id}");
    }
}

/// The wire: nodes with different keys never merge, and count why.
#[test]
fn nodes_with_different_keys_never_merge() {
    // One port for both clusters: their datagrams reach each other, their keys differ.
    let port = free_port(2);
    let mut a = Cluster::new("key-a", port, 2).with_key();
    let b = Cluster::new("key-b", port, 2).with_key();
    a.start(1);
    // Node 2 runs with the other cluster's key file but the same nodelist and port.
    let mut b_args = a.args(2);
    let key_at = b_args.iter().position(|s| s == "--key-file").unwrap();
    b_args[key_at + 1] = b.key.as_ref().unwrap().display().to_string();
    let log = std::fs::File::create(a.dir.join("log2")).unwrap();
    let child = Command::new(DAEMON)
        .args(&b_args)
        .stderr(log)
        .spawn()
        .unwrap();
    a.daemons[2] = Some(Daemon { child });
    a.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    a.wait_ring(&[2], FORM_TIMEOUT).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || a.counter(1, "drop_auth") > 0
            && a.counter(2, "drop_auth") > 0),
        "each node must see (and reject) the other's datagrams"
    );
    std::thread::sleep(Duration::from_millis(3 * TOKEN_MS));
    a.wait_ring(&[1], Duration::ZERO).unwrap();
    a.wait_ring(&[2], Duration::ZERO).unwrap();
}

/// Where one datagram ends up in a receiving engine: exactly one of these counters.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fate {
    Unlisted,
    Truncated,
    NotSealed,
    SenderMismatch,
    Replay,
    Auth,
    Decode,
    Accepted,
}

impl Fate {
    const ALL: [Fate; 8] = [
        Fate::Unlisted,
        Fate::Truncated,
        Fate::NotSealed,
        Fate::SenderMismatch,
        Fate::Replay,
        Fate::Auth,
        Fate::Decode,
        Fate::Accepted,
    ];

    fn counter(self) -> &'static str {
        match self {
            Fate::Unlisted => "drop_unlisted_sender",
            Fate::Truncated => "drop_truncated",
            Fate::NotSealed => "drop_not_sealed",
            Fate::SenderMismatch => "drop_sender_mismatch",
            Fate::Replay => "drop_replay",
            Fate::Auth => "drop_auth",
            Fate::Decode => "drop_decode",
            Fate::Accepted => "packets_accepted",
        }
    }
}

/// The fuzzer sends from the address of node 4: configured, never started.
const FUZZER: u32 = 4;
/// Largest datagram the fuzzer sends that must arrive whole (the engines take
/// datagrams of up to `datagram_bytes`, the default here); oversized ones are at least
/// `OVERSIZED`, so that the exact buffer size (rounded up to 64 bytes) does not matter.
const WHOLE: usize = ringcast_engine::daemon::config::DEFAULT_DATAGRAM_BYTES;
const OVERSIZED: usize = 2000;

/// One engine's receive path for datagrams from node 4's (listed) address, replayed
/// with the same library calls in the same order (`io::engine`'s `on_datagram`):
/// oversized → `drop_truncated`; `Opener::open_from` (not sealed, claimed sender,
/// replay window, tag) → `drop_not_sealed`, `drop_sender_mismatch`, `drop_replay`,
/// `drop_auth`; `Packet::decode` and Totem's check of sequence numbers and claimed
/// sender (`totem::acceptable`) → `drop_decode` or `packets_accepted`. Datagrams from
/// an unlisted address → `drop_unlisted_sender`, nothing else looked at.
struct Mirror {
    opener: Opener,
    cluster_id: u32,
}

impl Mirror {
    fn fate(&mut self, datagram: &[u8]) -> Fate {
        assert!(datagram.len() <= WHOLE || datagram.len() >= OVERSIZED);
        if datagram.len() > WHOLE {
            return Fate::Truncated;
        }
        let mut copy = datagram.to_vec();
        match self.opener.open_from(&mut copy, FUZZER) {
            Err(OpenError::Auth) => Fate::Auth,
            Err(OpenError::Replay) => Fate::Replay,
            Err(OpenError::SenderMismatch) => Fate::SenderMismatch,
            Err(OpenError::Truncated | OpenError::NotSealed | OpenError::TooManySenders) => {
                Fate::NotSealed
            }
            Ok(plain) => match Packet::decode(&Bytes::copy_from_slice(plain), self.cluster_id) {
                Ok(p) if ringcast_engine::totem::acceptable(&p, FUZZER) => Fate::Accepted,
                _ => Fate::Decode,
            },
        }
    }
}

/// The test's random numbers (seeded: a failure replays).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        ringcast_engine::splitmix::splitmix64(&mut self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Small values near the cluster's own (ring sequences, node ids), sometimes an edge.
    /// Never above 2^48: Totem overflows on sequence numbers near `u64::MAX` (see
    /// [`a_join_with_the_largest_ring_sequence_is_survived`]).
    fn field(&mut self, typical: u64) -> u64 {
        match self.below(16) {
            0 => 0,
            1 => 1 << 48,
            2 => u64::from(u32::MAX),
            3 => self.below(1 << 48),
            _ => self.below(typical),
        }
    }

    fn nodes(&mut self, max: usize) -> Vec<u32> {
        let mut nodes: Vec<u32> = (0..self.below(max as u64 + 1))
            .map(|_| 1 + self.below(6) as u32)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}

/// A well-formed packet of any kind with plausible fields (ring ids near the live ones,
/// node ids 1..=6), from node 4.
fn random_packet(rng: &mut Rng) -> Packet {
    use ringcast_engine::totem::RingId;
    let ring_id = RingId {
        rep: 1 + rng.below(4) as u32,
        seq: rng.field(40),
    };
    match rng.below(6) {
        0 => {
            let mut rtr: Vec<u64> = (0..rng.below(8)).map(|_| rng.field(100)).collect();
            rtr.sort_unstable();
            Packet::Token(Token {
                sender: FUZZER,
                ring_id,
                token_seq: rng.field(10_000),
                seq: rng.field(1000),
                aru: rng.field(1000),
                aru_addr: rng.below(5) as u32,
                fcc: rng.field(50) as u32,
                backlog: rng.field(50) as u32,
                retrans_flg: rng.below(2) == 0,
                install_seq: rng.field(1000),
                rtr,
            })
        }
        1 => {
            let len = rng.below(200) as usize;
            Packet::Mcast(Mcast {
                sender: FUZZER,
                ring_id,
                seq: rng.field(1000),
                origin: 1 + rng.below(5) as u32,
                safe: rng.below(2) == 0,
                recovered: (rng.below(4) == 0).then(|| Recovered {
                    ring_id,
                    seq: rng.field(1000),
                    origin: 1 + rng.below(5) as u32,
                    safe: false,
                }),
                payload: Bytes::from(rng.bytes(len)),
            })
        }
        2 => Packet::Join(Join {
            sender: FUZZER,
            ring_seq: rng.field(40),
            proc_list: rng.nodes(6),
            failed_list: rng.nodes(3),
            leaving: rng.below(8) == 0,
        }),
        3 => Packet::Commit(CommitToken {
            sender: FUZZER,
            ring_id,
            token_seq: rng.field(100),
            memb_index: rng.below(6) as u32,
            entries: rng
                .nodes(6)
                .into_iter()
                .map(|node| CommitEntry {
                    node,
                    old_ring_id: ring_id,
                    old_aru: rng.field(1000),
                    old_high_seq: rng.field(1000),
                    high_delivered: rng.field(1000),
                    safe_upto: rng.field(1000),
                    filled: rng.below(2) == 0,
                })
                .collect(),
        }),
        4 => Packet::MergeDetect {
            sender: FUZZER,
            ring_id,
        },
        _ => Packet::HoldCancel {
            sender: FUZZER,
            ring_id,
        },
    }
}

/// One to four mutations: bit flips, byte and field overwrites with edge values,
/// truncation, extension.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len() as u64;
        match rng.below(6) {
            0 if len > 0 => data[rng.below(len) as usize] ^= 1 << rng.below(8),
            1 if len > 0 => data[rng.below(len) as usize] = rng.next() as u8,
            2 if len >= 4 => {
                let at = rng.below(len - 3) as usize;
                let value = [0, 1, 384, 385, 0xffff, u32::MAX][rng.below(6) as usize];
                data[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            3 => data.truncate(rng.below(len + 1) as usize),
            4 => {
                let n = 1 + rng.below(64) as usize;
                let extra = rng.bytes(n);
                data.extend_from_slice(&extra);
            }
            _ => data.reverse(),
        }
    }
    data.truncate(WHOLE - 64);
}

/// Kernel drops (socket receive queue full) of the UDP socket bound to 127.0.0.id:port,
/// from /proc/net/udp.
fn kernel_drops(id: u32, port: u16) -> u64 {
    let local = format!("{id:02X}00007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no socket {local} in /proc/net/udp"))
}

/// "100,000 random and mutated datagrams sent at a running engine: it stays up,
/// the ring stays intact, the drop counters account for them"; "Wrong key, replayed
/// packets, a packet of another cluster: rejected and counted"; "Nothing in a datagram
/// can make the engine panic".
///
/// A sealed 3-node ring (nodes 1–3 of a 4-node nodelist) receives, spread over its
/// three engines: random bytes; well-formed packets in the clear; well-formed packets,
/// mutated or not, sealed with the cluster's key by "node 4" (so that they reach Totem's
/// decoder, and some Totem itself); sealed packets mutated after sealing; replays of
/// earlier datagrams; packets sealed for another cluster id; packets claiming node 2;
/// oversized datagrams; datagrams from an unlisted address.
///
/// Accounting: each engine counts every datagram it receives exactly once, in one
/// `drop_*` counter or in `packets_accepted`. The test predicts each of its datagrams'
/// counter with the same library calls in the engine's order ([`Mirror`]), checks that
/// the kernel dropped none of them (/proc/net/udp), and then requires, per engine, every
/// drop counter to have grown by exactly its prediction (the ring's own traffic adds to
/// none of them: it is sealed, listed and fresh) and `packets_accepted` by at least its
/// prediction (the ring's own traffic adds there). Datagrams that decode are legitimate
/// as far as the wire goes (node 4 holds the key): Totem may act on them (a join from
/// node 4 starts a membership round), which is why the ring is only required to be
/// intact again once the datagrams stop.
#[test]
fn a_hundred_thousand_hostile_datagrams_are_counted_and_survived() {
    let port = free_port(FUZZER);
    let mut cluster = Cluster::new("fuzz", port, 4).with_key();
    cluster.start(1);
    cluster.start(2);
    cluster.start(3);
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    let key = keyfile::read(cluster.key.as_ref().unwrap()).unwrap();
    let cluster_id = ringcast_engine::daemon::config::cluster_id(&format!("test-{port}"));

    let listed = UdpSocket::bind(format!("{}:{port}", addr(FUZZER))).unwrap();
    let unlisted = UdpSocket::bind("127.0.0.9:0").unwrap();
    let counters = |cluster: &Cluster, id: u32| -> Vec<u64> {
        let s = cluster.status(id).expect("running");
        Fate::ALL
            .iter()
            .map(|f| s.counter(f.counter()).unwrap())
            .collect()
    };
    let before: Vec<Vec<u64>> = (1..=3).map(|id| counters(&cluster, id)).collect();
    let drops_before: Vec<u64> = (1..=3).map(|id| kernel_drops(id, port)).collect();

    // One stream per engine, built (and its fates predicted) on its own thread while
    // the main thread sends: the datagrams to different engines are independent (each
    // engine keeps its own replay windows), and debug-build sealing is the slow part.
    let total: usize = 100_000;
    let streams: Vec<_> = (0..3u64)
        .map(|t| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, bool, Fate)>(4096);
            let key = key.clone();
            let count = total / 3 + usize::from((t as usize) < total % 3);
            let worker = std::thread::spawn(move || {
                let mut stream = Stream::new(&key, cluster_id, 0x5eed_0000 + t);
                for _ in 0..count {
                    if tx.send(stream.next()).is_err() {
                        break;
                    }
                }
                stream.predicted
            });
            (rx, worker, count)
        })
        .collect();

    let batch = 500; // per engine
    let started = Instant::now();
    let mut done = [0usize; 3];
    while done
        .iter()
        .zip(&streams)
        .any(|(d, (_, _, count))| d < count)
    {
        let packets_in: Vec<u64> = (1..=3)
            .map(|id| cluster.counter(id, "packets_in"))
            .collect();
        let mut batch_sent = [0u64; 3];
        for _ in 0..batch {
            for (t, (rx, _, count)) in streams.iter().enumerate() {
                if done[t] == *count {
                    continue;
                }
                let (datagram, from_unlisted, _) = rx.recv().expect("stream worker");
                let from = if from_unlisted { &unlisted } else { &listed };
                from.send_to(&datagram, format!("{}:{port}", addr(t as u32 + 1)))
                    .unwrap();
                done[t] += 1;
                batch_sent[t] += 1;
            }
        }
        // Pace: each engine has taken in at least this batch (its own ring's traffic
        // counts too, so at most one more batch waits in a socket: 500 datagrams of at
        // most 4 KB, far below the engines' 8 MB receive buffers).
        for id in 1..=3u32 {
            let want = packets_in[id as usize - 1] + batch_sent[id as usize - 1];
            assert!(
                poll_until(Duration::from_secs(10), Duration::from_millis(1), || {
                    cluster
                        .status(id)
                        .and_then(|s| s.counter("packets_in"))
                        .is_some_and(|n| n >= want)
                }),
                "node {id} stopped taking datagrams after {}; logs in {}",
                done[id as usize - 1],
                cluster.dir.display()
            );
        }
    }
    eprintln!("sent {total} datagrams in {:?}", started.elapsed());
    let predicted: Vec<std::collections::BTreeMap<Fate, u64>> = streams
        .into_iter()
        .map(|(_, worker, _)| worker.join().expect("stream worker"))
        .collect();

    for (id, before) in (1..=3).zip(&drops_before) {
        assert_eq!(
            kernel_drops(id, port),
            *before,
            "the kernel dropped datagrams to node {id}: the accounting cannot be exact"
        );
    }
    let expected = |t: usize, fate: Fate| predicted[t].get(&fate).copied().unwrap_or(0);
    let delta = |cluster: &Cluster, t: usize| -> Vec<u64> {
        counters(cluster, t as u32 + 1)
            .iter()
            .zip(&before[t])
            .map(|(now, then)| now - then)
            .collect()
    };
    let accounted = |cluster: &Cluster, t: usize| {
        let d = delta(cluster, t);
        Fate::ALL.iter().enumerate().all(|(k, fate)| match fate {
            Fate::Accepted => d[k] >= expected(t, *fate),
            _ => d[k] == expected(t, *fate),
        })
    };
    for t in 0..3 {
        wait_for(Duration::from_secs(10), || accounted(&cluster, t));
        let d = delta(&cluster, t);
        let table: Vec<String> = Fate::ALL
            .iter()
            .enumerate()
            .map(|(k, f)| format!("{} {} (predicted {})", f.counter(), d[k], expected(t, *f)))
            .collect();
        eprintln!("node {}: {}", t + 1, table.join(", "));
        assert!(accounted(&cluster, t), "node {}: {table:?}", t + 1);
        assert_eq!(predicted[t].values().sum::<u64>(), done[t] as u64);
        // Every kind of rejection the issue names was exercised.
        for fate in Fate::ALL {
            assert!(expected(t, fate) > 100, "node {}: few {fate:?}", t + 1);
        }
    }
    // Every datagram counted once: at a moment between two datagrams, packets_in equals
    // the sum of the drop counters and packets_accepted.
    for id in 1..=3 {
        assert!(
            wait_for(Duration::from_secs(5), || {
                let s = cluster.status(id).unwrap();
                let parts: u64 = Fate::ALL
                    .iter()
                    .map(|f| s.counter(f.counter()).unwrap())
                    .sum::<u64>()
                    + s.counter("drop_rule").unwrap();
                parts == s.counter("packets_in").unwrap()
            }),
            "node {id}: packets_in is not the sum of its parts"
        );
    }

    for id in 1..=3 {
        assert!(
            cluster.daemon(id).child.try_wait().unwrap().is_none(),
            "node {id} died; log: {}",
            cluster.log(id)
        );
    }
    let healed = Instant::now();
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    eprintln!(
        "ring [1, 2, 3] intact {:?} after the last datagram",
        healed.elapsed()
    );
}

/// The datagrams for one engine, with their predicted fates.
struct Stream {
    rng: Rng,
    cluster_id: u32,
    mirror: Mirror,
    /// Node 4's sealer (for this engine only: counters need only be fresh per receiver).
    sealer: Sealer,
    other_cluster: Sealer,
    as_node2: Sealer,
    /// Earlier datagrams, for replays.
    sent: Vec<Vec<u8>>,
    predicted: std::collections::BTreeMap<Fate, u64>,
}

impl Stream {
    fn new(key: &Key, cluster_id: u32, seed: u64) -> Stream {
        Stream {
            rng: Rng(seed),
            cluster_id,
            mirror: Mirror {
                opener: Opener::new(key, cluster_id, 4),
                cluster_id,
            },
            sealer: Sealer::new(key, FUZZER, cluster_id, counter_from_clock()),
            other_cluster: Sealer::new(key, FUZZER, cluster_id ^ 1, counter_from_clock()),
            as_node2: Sealer::new(key, 2, cluster_id, counter_from_clock()),
            sent: Vec::new(),
            predicted: std::collections::BTreeMap::new(),
        }
    }

    /// The next datagram, whether it goes out from the unlisted address, and its fate.
    fn next(&mut self) -> (Vec<u8>, bool, Fate) {
        let rng = &mut self.rng;
        let cluster_id = self.cluster_id;
        let mut from_unlisted = false;
        let datagram = match rng.below(100) {
            0..15 => {
                let len = rng.below(WHOLE as u64 + 1) as usize;
                rng.bytes(len)
            }
            15..25 => {
                let mut clear = random_packet(rng).encode(cluster_id).to_vec();
                if rng.below(2) == 0 {
                    mutate(rng, &mut clear);
                }
                clear
            }
            25..50 => {
                let mut plain = random_packet(rng).encode(cluster_id).to_vec();
                if rng.below(5) != 0 {
                    mutate(rng, &mut plain);
                }
                self.sealer.seal(&plain)
            }
            50..65 => {
                let plain = random_packet(rng).encode(cluster_id);
                let mut sealed = self.sealer.seal(&plain);
                mutate(rng, &mut sealed);
                sealed
            }
            65..73 if !self.sent.is_empty() => {
                let earlier = rng.below(self.sent.len() as u64) as usize;
                self.sent[earlier].clone()
            }
            65..78 => self
                .other_cluster
                .seal(&random_packet(rng).encode(cluster_id)),
            78..82 => self.as_node2.seal(&random_packet(rng).encode(cluster_id)),
            82..92 => {
                from_unlisted = true;
                let len = rng.below(WHOLE as u64 + 1) as usize;
                rng.bytes(len)
            }
            _ => {
                let len = OVERSIZED + rng.below(2000) as usize;
                rng.bytes(len)
            }
        };
        let fate = if from_unlisted {
            Fate::Unlisted
        } else {
            self.mirror.fate(&datagram)
        };
        *self.predicted.entry(fate).or_default() += 1;
        if self.sent.len() < 256 {
            self.sent.push(datagram.clone());
        } else {
            let slot = self.rng.below(256) as usize;
            self.sent[slot] = datagram.clone();
        }
        (datagram, from_unlisted, fate)
    }
}

/// `ringcast status` prints the ring and the counters of a running engine.
#[test]
fn ringcast_status_prints_the_ring() {
    let mut cluster = Cluster::new("status", free_port(1), 1);
    cluster.start_all();
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let output = Command::new(cli_bin())
        .args(["status", "--node-id", "1", "--state-dir"])
        .arg(cluster.state_dir(1))
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for line in ["state operational", "members 1", "running true"] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    assert!(text.lines().any(|l| l.starts_with("packets_in ")));
    assert!(text.lines().any(|l| l.starts_with("token_rotations ")));
    let missing = Command::new(cli_bin())
        .args(["status", "--stats", "/nonexistent/stats_1"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

/// "A bad or inconsistent config is rejected at start with a message that
/// names the setting."
#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    for (args, setting) in [
        (&["--node-id", "4", "--node", "1=127.0.0.1"][..], "nodelist"),
        (&["--set", "totem.join_ms=5"][..], "totem.join"),
        (&["--idle", "sometimes"][..], "sometimes"),
        (&["--datagram-bytes", "10"][..], "datagram_bytes"),
    ] {
        let output = Command::new(DAEMON).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
    }
}

impl Cluster {
    /// Sets node `id`'s fault-injection drop rule and makes it reload the rule.
    fn drop_from(&mut self, id: u32, nodes: &[u32]) {
        let list: Vec<String> = nodes.iter().map(u32::to_string).collect();
        std::fs::write(self.state_dir(id).join("drop_nodes"), list.join(",")).unwrap();
        self.daemon(id).signal(libc::SIGUSR1);
    }

    fn assert_never_out_of_order(&self, ids: &[u32]) {
        for id in ids {
            assert_eq!(self.counter(*id, "load_out_of_order"), 0, "node {id}");
        }
    }
}

/// Partition (the engine's own drop rule) → two rings; heal → one ring again
/// (docs/cpg.md §9.6, "Merge detection"). The messages generated before, during and
/// after keep the guarantees (agreed order, EVS, no loss to nodes 1 and 2, which stay
/// together).
#[test]
fn a_partition_makes_two_rings_and_healing_merges_them() {
    let mut cluster = Cluster::new("partition", free_port(3), 3);
    with_checked_load(&mut cluster, 100);
    cluster.start_all();
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(3, 50);

    cluster.drop_from(1, &[3]);
    cluster.drop_from(2, &[3]);
    cluster.drop_from(3, &[1, 2]);
    cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    cluster.wait_ring(&[3], FORM_TIMEOUT).unwrap();
    assert!(cluster.counter(3, "drop_rule") > 0);
    cluster.wait_load_flows(3, 50);

    for id in 1..=3 {
        cluster.drop_from(id, &[]);
    }
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    let before = cluster.counter(3, "load_delivered");
    assert!(
        wait_for(Duration::from_secs(10), || cluster
            .counter(3, "load_delivered")
            > before + 20),
        "no deliveries after healing"
    );
    cluster.assert_never_out_of_order(&[1, 2, 3]);
    cluster.stop_load_and_settle(&[1, 2, 3]);
    cluster.check_guarantees(&[1, 2]);
}

/// Five engines form one ring (1, 3 and 5 engines are tested); `kill -9` the
/// representative, the other four re-form; restarted, it rejoins. The messages
/// generated throughout keep the guarantees (no loss to nodes 2–5).
#[test]
fn five_nodes_survive_the_loss_of_the_representative() {
    let mut cluster = Cluster::new("five", free_port(5), 5).with_key();
    with_checked_load(&mut cluster, 60);
    cluster.start_all();
    cluster.wait_ring(&[1, 2, 3, 4, 5], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(5, 100);
    cluster.kill9(1);
    let reformed = cluster.wait_ring(&[2, 3, 4, 5], FORM_TIMEOUT).unwrap();
    eprintln!("survivors re-formed in {reformed:?}");
    assert_reformed_in_time(reformed);
    cluster.wait_load_flows(5, 100);
    cluster.start(1);
    cluster.wait_ring(&[1, 2, 3, 4, 5], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(1, 100);
    cluster.stop_load_and_settle(&[1, 2, 3, 4, 5]);
    cluster.check_guarantees(&[2, 3, 4, 5]);
}

/// The multicast transport (docs/cpg.md §11, "UDP"): multicasts go to the group, tokens
/// are unicast; works over loopback with the interface set to the node's address.
#[test]
fn multicast_transport_forms_a_ring() {
    let mut cluster = Cluster::new("multicast", free_port(2), 2);
    cluster.extra = vec![
        "--transport".into(),
        "multicast".into(),
        "--multicast-group".into(),
        "239.192.76.219".into(),
    ];
    cluster.start_all();
    cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    for id in 1..=2 {
        assert_eq!(cluster.counter(id, "send_errors"), 0);
    }
}

/// Three engines "in network namespaces that the test creates and removes";
/// "a partition (netns with the veth taken down) → two rings; heal → one ring again"
/// (docs/cpg.md §9.5 "Loss", §9.6 "Merge detection"), with generated messages checked
/// across all three logs. Skipped, saying so, without root or network namespaces.
#[test]
fn network_namespaces_partition_by_link_down_and_heal() {
    let netns = match Netns::create(3) {
        Ok(netns) => netns,
        Err(why) => {
            println!("skipped: network namespaces unavailable: {why}");
            eprintln!("skipped: network namespaces unavailable: {why}");
            return;
        }
    };
    let prefix = netns.prefix.clone();
    let mut cluster = Cluster::new("netns", free_port(3), 3).with_key();
    cluster.netns = Some(prefix.clone());
    with_checked_load(&mut cluster, 100);
    cluster.start_all();
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(3, 50);

    netns.set_port(3, false);
    cluster.wait_ring(&[1, 2], FORM_TIMEOUT).unwrap();
    cluster.wait_ring(&[3], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(3, 50);
    cluster.wait_load_flows(1, 50);

    netns.set_port(3, true);
    cluster.wait_ring(&[1, 2, 3], FORM_TIMEOUT).unwrap();
    cluster.wait_load_flows(3, 50);
    cluster.stop_load_and_settle(&[1, 2, 3]);
    cluster.check_guarantees(&[1, 2]);
    for id in 1..=3 {
        assert_eq!(cluster.counter(id, "drop_auth"), 0, "node {id}");
    }

    drop(cluster);
    drop(netns);
    let left: Vec<String> = netns_names()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// Nothing in a datagram can make the engine panic (docs/invariants.md), for sequence numbers at
/// their largest: a join whose ring sequence is `u64::MAX`, from a node holding the key
/// (or from any listed address in a cluster without one). Totem refuses packets with a
/// sequence number above `totem::MAX_SEQ` (it used to overflow on them); found by the
/// 100,000-datagram test, which keeps its sequence numbers at or below 2^48 so that
/// its drop accounting stays a pure function of the wire decoder.
#[test]
fn a_join_with_the_largest_ring_sequence_is_survived() {
    let port = free_port(2);
    let mut cluster = Cluster::new("seq-max", port, 2).with_key();
    cluster.start(1);
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
    let key = keyfile::read(cluster.key.as_ref().unwrap()).unwrap();
    let cluster_id = ringcast_engine::daemon::config::cluster_id(&format!("test-{port}"));
    let socket = UdpSocket::bind(format!("{}:{port}", addr(2))).unwrap();
    let mut sealer = Sealer::new(&key, 2, cluster_id, counter_from_clock());
    let join = Packet::Join(Join {
        sender: 2,
        ring_seq: u64::MAX,
        proc_list: vec![1, 2],
        failed_list: vec![2],
        leaving: false,
    });
    socket
        .send_to(
            &sealer.seal(&join.encode(cluster_id)),
            format!("{}:{port}", addr(1)),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(5 * TOKEN_MS));
    assert!(
        cluster.daemon(1).child.try_wait().unwrap().is_none(),
        "node 1 died: {}",
        cluster.log(1)
    );
    cluster.wait_ring(&[1], FORM_TIMEOUT).unwrap();
}
