//! Sealed datagrams (ChaCha20-Poly1305 with the cluster key): random bytes would never get
//! past the tag, so the input describes datagrams that a node with the right key (or with
//! another key) seals, which the fuzzer may then damage, replay or replace with garbage.
//!
//! Checked: opening never panics; an undamaged datagram sealed with the right key opens
//! to its plaintext and sender exactly once (its replay is refused); one sealed with
//! another key, damaged in any byte, or of another cluster never opens. What opens goes
//! on to the Totem decoder, as in the engine.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ringcast_proto::wire::Packet;
use ringcast_proto::wire::seal::{Key, OpenError, Opener, Sealer};

const CLUSTER_ID: u32 = 0x5eed_0001;
const KEY: [u8; 32] = *b"ringcast-fuzz-key-0123456789abcd";

#[derive(Debug, Arbitrary)]
enum Datagram {
    /// Sealed by `sender` with the right key, counter `counter`, then `damage`d.
    Sealed {
        sender: u8,
        counter: u64,
        plaintext: Vec<u8>,
        damage: Vec<(u16, u8)>,
        other_cluster: bool,
    },
    /// Sealed with another key.
    WrongKey {
        key: [u8; 32],
        sender: u8,
        plaintext: Vec<u8>,
    },
    /// Garbage, or replays the last `Sealed` datagram as it was sent.
    Raw(Vec<u8>),
    Replay,
}

fuzz_target!(|datagrams: Vec<Datagram>| {
    let key = Key::from_bytes(KEY);
    let mut opener = Opener::new(&key, CLUSTER_ID, 8);
    let mut last_opened: Option<Vec<u8>> = None;
    for datagram in datagrams.into_iter().take(64) {
        match datagram {
            Datagram::Sealed {
                sender,
                counter,
                plaintext,
                damage,
                other_cluster,
            } => {
                let sender = u32::from(sender % 12) + 1;
                let cluster = if other_cluster {
                    CLUSTER_ID ^ 1
                } else {
                    CLUSTER_ID
                };
                // A sealer never starts at the last counter (it would have none left).
                let counter = counter.min(u64::MAX - 1);
                let mut sealed = Sealer::new(&key, sender, cluster, counter).seal(&plaintext);
                let original = sealed.clone();
                for (at, xor) in damage {
                    let len = sealed.len();
                    sealed[usize::from(at) % len] ^= xor;
                }
                let damaged = sealed != original;
                let result = opener.open(&mut sealed).map(|(s, p)| (s, p.to_vec()));
                match result {
                    Ok((s, p)) => {
                        assert!(!damaged && !other_cluster, "a forged datagram opened");
                        assert_eq!((s, &p), (sender, &plaintext));
                        decode(&p);
                        last_opened = Some(original);
                    }
                    Err(e) => assert!(
                        damaged
                            || other_cluster
                            || matches!(e, OpenError::Replay | OpenError::TooManySenders),
                        "an intact datagram was refused: {e:?}"
                    ),
                }
            }
            Datagram::WrongKey {
                key: other,
                sender,
                plaintext,
            } => {
                let other = Key::from_bytes(other);
                let mut sealed =
                    Sealer::new(&other, u32::from(sender) + 1, CLUSTER_ID, 1).seal(&plaintext);
                if other.as_bytes() != &KEY {
                    assert!(
                        opener.open(&mut sealed).is_err(),
                        "another key's datagram opened"
                    );
                }
            }
            Datagram::Raw(mut bytes) => {
                if let Ok((_, plain)) = opener.open(&mut bytes) {
                    decode(plain);
                }
            }
            Datagram::Replay => {
                if let Some(mut again) = last_opened.clone() {
                    assert_eq!(opener.open(&mut again).err(), Some(OpenError::Replay));
                }
            }
        }
    }
});

fn decode(plain: &[u8]) {
    let _ = Packet::decode(&Bytes::copy_from_slice(plain), CLUSTER_ID);
}
