//! Authenticated encryption of whole datagrams with a pre-shared key, and
//! replay protection. A sealed datagram is checked and decrypted before any Totem parsing;
//! one that fails is counted and dropped by the caller.
//!
//! ```text
//!  0     2   3   4        8                  16                         len-16    len
//!  +-----+---+---+--------+------------------+---------- - - ------------+---------+
//!  |magic|ver|rsv| sender | counter (u64)    | ChaCha20 ciphertext of the | Poly1305|
//!  | "RS"| 1 | 0 | (u32)  |                  | Totem packet               | tag     |
//!  +-----+---+---+--------+------------------+---------- - - ------------+---------+
//!  \_______________ header, authenticated ___/
//! ```
//!
//! - AEAD: ChaCha20-Poly1305 (RFC 8439), 32-byte key (the daemon reads it from its key
//!   file: `ringcast_engine::daemon::keyfile`). Pure functions over bytes: the key and
//!   the first counter are inputs.
//! - Nonce (96 bits): `sender (u32 LE) ‖ counter (u64 LE)`. All nodes share the key, so
//!   the sender id keeps their nonce spaces apart; each sender never repeats a counter.
//! - Associated data: the 16-byte header followed by the cluster id (u32 LE), so a
//!   datagram of another cluster that happens to use the same key fails to verify.
//! - Counter: starts at the wall clock in nanoseconds since the Unix epoch when the
//!   sealer is created and grows by one per datagram. A node that restarts therefore
//!   continues above its previous counters (as long as it sends fewer than 10^9
//!   datagrams per second and the clock does not step back across a restart), and its
//!   peers accept it without any handshake.
//! - Replay: per sender, the highest counter accepted and a bitmap of the
//!   [`REPLAY_WINDOW`] counters below it (RFC 6479). A counter already seen or older
//!   than the window is refused. The window only moves after the tag verified.

use std::collections::HashMap;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};

use crate::totem::NodeId;

/// Length of a key file.
pub const KEY_BYTES: usize = 32;
/// Sealed header before the ciphertext.
pub const HEADER_BYTES: usize = 16;
/// The Poly1305 tag after the ciphertext.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a datagram.
pub const OVERHEAD: usize = HEADER_BYTES + TAG_BYTES;
/// Counters this far below the highest accepted one are still accepted once.
pub const REPLAY_WINDOW: u64 = 1024;

/// "RS" little-endian: distinct from the Totem magic ("RC"), so that a sealed node and a
/// clear one never mistake each other's datagrams.
const MAGIC: u16 = 0x5352;
const VERSION: u8 = 1;
const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// A pre-shared key. Its bytes are never printed.
#[derive(Clone)]
pub struct Key([u8; KEY_BYTES]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key(bytes)
    }

    /// The key's bytes, for writing it to a key file.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

/// Seals the datagrams one node sends.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    sender: NodeId,
    cluster_id: u32,
    /// The counter of the next datagram.
    counter: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("sender", &self.sender)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

fn nonce(sender: NodeId, counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&sender.to_le_bytes());
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(nonce)
}

fn associated_data(header: &[u8], cluster_id: u32) -> [u8; HEADER_BYTES + 4] {
    let mut aad = [0u8; HEADER_BYTES + 4];
    aad[..HEADER_BYTES].copy_from_slice(&header[..HEADER_BYTES]);
    aad[HEADER_BYTES..].copy_from_slice(&cluster_id.to_le_bytes());
    aad
}

impl Sealer {
    /// `first_counter` is chosen by the caller (the daemon starts at the wall clock, see
    /// the module doc); 0 is not used.
    pub fn new(key: &Key, sender: NodeId, cluster_id: u32, first_counter: u64) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(&key.0.into()),
            sender,
            cluster_id,
            counter: first_counter.max(1),
        }
    }

    /// Seals `plaintext` into a new datagram of `plaintext.len() + OVERHEAD` bytes.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.seal_pieces(plaintext.len(), [plaintext])
    }

    /// [`Sealer::seal`] of the concatenation of `pieces` (`len` bytes in all): a datagram
    /// in pieces is encrypted into the sealed one without being joined first.
    pub fn seal_pieces<'a>(
        &mut self,
        len: usize,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<u8> {
        let counter = self.counter;
        // Counters never repeat: at 2^64 − 1 the node would need a new key (centuries).
        self.counter = self.counter.checked_add(1).expect("seal counter exhausted");
        let mut out = Vec::with_capacity(len + OVERHEAD);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION);
        out.push(0);
        out.extend_from_slice(&self.sender.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        let aad = associated_data(&out, self.cluster_id);
        for piece in pieces {
            out.extend_from_slice(piece);
        }
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.sender, counter), &aad, &mut out[HEADER_BYTES..])
            .expect("ChaCha20-Poly1305 seals any datagram below 256 GiB");
        out.extend_from_slice(&tag);
        out
    }
}

/// Why a datagram was dropped unopened.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than header and tag.
    #[error("truncated sealed datagram")]
    Truncated,
    /// Not a sealed datagram of this version (for example a node running in the clear).
    #[error("not a sealed datagram")]
    NotSealed,
    /// The tag did not verify: another key, another cluster, or tampering.
    #[error("authentication failed")]
    Auth,
    /// A counter seen already or older than the replay window.
    #[error("replayed datagram")]
    Replay,
    /// More distinct senders than the opener tracks.
    #[error("too many senders")]
    TooManySenders,
    /// It claims a sender other than the node whose address it came from
    /// ([`Opener::open_from`]).
    #[error("claims another sender than its source")]
    SenderMismatch,
}

/// Per-sender replay window (RFC 6479 style bitmap).
#[derive(Clone, Debug, Default)]
struct ReplayWindow {
    /// Highest counter accepted (0 = none yet).
    top: u64,
    /// Bit `c % REPLAY_WINDOW` is set when counter `c` in `(top − window, top]` was seen.
    seen: [u64; WINDOW_WORDS],
}

impl ReplayWindow {
    fn bit(counter: u64) -> (usize, u64) {
        let index = counter % REPLAY_WINDOW;
        ((index / 64) as usize, 1 << (index % 64))
    }

    fn is_fresh(&self, counter: u64) -> bool {
        if counter > self.top {
            return true;
        }
        if self.top - counter >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = Self::bit(counter);
        self.seen[word] & mask == 0
    }

    /// Records `counter`, which [`ReplayWindow::is_fresh`] accepted.
    fn accept(&mut self, counter: u64) {
        if counter > self.top {
            if counter - self.top >= REPLAY_WINDOW {
                self.seen = [0; WINDOW_WORDS];
            } else {
                for c in self.top + 1..=counter {
                    let (word, mask) = Self::bit(c);
                    self.seen[word] &= !mask;
                }
            }
            self.top = counter;
        }
        let (word, mask) = Self::bit(counter);
        self.seen[word] |= mask;
    }
}

/// Verifies and decrypts the datagrams a node receives.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    cluster_id: u32,
    windows: HashMap<NodeId, ReplayWindow>,
    max_senders: usize,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("senders", &self.windows.len())
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Tracks at most `max_senders` senders (the nodelist's size).
    pub fn new(key: &Key, cluster_id: u32, max_senders: usize) -> Opener {
        Opener {
            cipher: ChaCha20Poly1305::new(&key.0.into()),
            cluster_id,
            windows: HashMap::with_capacity(max_senders),
            max_senders,
        }
    }

    /// The sender a sealed datagram claims, read before any cryptography (to match it
    /// against the source address first). Not authenticated yet.
    pub fn claimed_sender(datagram: &[u8]) -> Option<NodeId> {
        let bytes = datagram.get(4..8)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Verifies `datagram` and decrypts it in place. Returns the sender and the Totem
    /// packet (a sub-slice of `datagram`). Nothing is trusted before the tag verified.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<(NodeId, &'a [u8]), OpenError> {
        self.open_checked(datagram, None)
    }

    /// [`Opener::open`] for a datagram that came from the address of node `source`: one
    /// that claims another sender is refused before any cryptography, so that it cannot
    /// move that other sender's replay window (a captured datagram of node 2, sent on
    /// from node 4's address before node 2's own copy arrives, would otherwise make the
    /// real one look replayed).
    pub fn open_from<'a>(
        &mut self,
        datagram: &'a mut [u8],
        source: NodeId,
    ) -> Result<&'a [u8], OpenError> {
        self.open_checked(datagram, Some(source))
            .map(|(_, plain)| plain)
    }

    fn open_checked<'a>(
        &mut self,
        datagram: &'a mut [u8],
        source: Option<NodeId>,
    ) -> Result<(NodeId, &'a [u8]), OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::Truncated);
        }
        if datagram[..2] != MAGIC.to_le_bytes() || datagram[2] != VERSION || datagram[3] != 0 {
            return Err(OpenError::NotSealed);
        }
        let sender = u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        if source.is_some_and(|source| source != sender) {
            return Err(OpenError::SenderMismatch);
        }
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&datagram[8..16]);
        let counter = u64::from_le_bytes(counter_bytes);
        if counter == 0
            || self
                .windows
                .get(&sender)
                .is_some_and(|w| !w.is_fresh(counter))
        {
            return Err(OpenError::Replay);
        }
        if !self.windows.contains_key(&sender) && self.windows.len() >= self.max_senders {
            return Err(OpenError::TooManySenders);
        }
        let aad = associated_data(datagram, self.cluster_id);
        let len = datagram.len();
        let (body, tag) = datagram.split_at_mut(len - TAG_BYTES);
        let tag = Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(
                &nonce(sender, counter),
                &aad,
                &mut body[HEADER_BYTES..],
                &tag,
            )
            .map_err(|_| OpenError::Auth)?;
        self.windows.entry(sender).or_default().accept(counter);
        Ok((sender, &datagram[HEADER_BYTES..len - TAG_BYTES]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: u32 = 0xc1;

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; KEY_BYTES])
    }

    fn pair() -> (Sealer, Opener) {
        (
            Sealer::new(&key(1), 7, CLUSTER, 100),
            Opener::new(&key(1), CLUSTER, 8),
        )
    }

    #[test]
    fn round_trip() {
        let (mut sealer, mut opener) = pair();
        let mut d = sealer.seal(b"totem packet");
        assert_eq!(d.len(), 12 + OVERHEAD);
        assert_eq!(Opener::claimed_sender(&d), Some(7));
        let (sender, plain) = opener.open(&mut d).unwrap();
        assert_eq!((sender, plain), (7, &b"totem packet"[..]));
        let mut empty = sealer.seal(b"");
        assert_eq!(opener.open(&mut empty).unwrap().1, b"");
    }

    #[test]
    fn wrong_key_or_cluster_is_rejected() {
        let (mut sealer, _) = pair();
        let d = sealer.seal(b"hello");
        let mut other_key = Opener::new(&key(2), CLUSTER, 8);
        assert_eq!(other_key.open(&mut d.clone()), Err(OpenError::Auth));
        let mut other_cluster = Opener::new(&key(1), CLUSTER + 1, 8);
        assert_eq!(other_cluster.open(&mut d.clone()), Err(OpenError::Auth));
        // A failed datagram does not move the window: the genuine one still opens.
        let mut opener = Opener::new(&key(1), CLUSTER, 8);
        assert!(opener.open(&mut d.clone()).is_ok());
    }

    #[test]
    fn replay_is_rejected_reordering_is_not() {
        let (mut sealer, mut opener) = pair();
        let d1 = sealer.seal(b"1");
        let d2 = sealer.seal(b"2");
        let d3 = sealer.seal(b"3");
        assert!(opener.open(&mut d1.clone()).is_ok());
        assert!(opener.open(&mut d3.clone()).is_ok());
        assert!(opener.open(&mut d2.clone()).is_ok(), "late but new");
        for d in [&d1, &d2, &d3] {
            assert_eq!(opener.open(&mut d.clone()), Err(OpenError::Replay));
        }
        // Far behind the window: refused even though never seen.
        let mut old = Sealer::new(&key(1), 7, CLUSTER, 1);
        let stale = old.seal(b"old");
        for _ in 0..REPLAY_WINDOW {
            let mut d = sealer.seal(b"x");
            opener.open(&mut d).unwrap();
        }
        assert_eq!(opener.open(&mut stale.clone()), Err(OpenError::Replay));
        // A restarted sender continues above (the daemon's clock-based counter) and is
        // accepted.
        let mut restarted = Sealer::new(&key(1), 7, CLUSTER, 1 << 40);
        assert!(opener.open(&mut restarted.seal(b"back")).is_ok());
    }

    #[test]
    fn tampering_is_rejected() {
        let (mut sealer, mut opener) = pair();
        let d = sealer.seal(b"some totem packet");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x40;
            assert!(opener.open(&mut t).is_err(), "flip at byte {i}");
        }
        assert!(opener.open(&mut d.clone()).is_ok());
    }

    #[test]
    fn truncation_is_rejected() {
        let (mut sealer, mut opener) = pair();
        let d = sealer.seal(b"some totem packet");
        for len in 0..d.len() {
            let expected = if len < OVERHEAD {
                OpenError::Truncated
            } else {
                OpenError::Auth
            };
            assert_eq!(
                opener.open(&mut d[..len].to_vec()),
                Err(expected),
                "len {len}"
            );
        }
    }

    #[test]
    fn clear_datagrams_and_sender_floods_are_rejected() {
        let mut opener = Opener::new(&key(1), CLUSTER, 2);
        let mut clear = vec![0x52, 0x43, 1, 0];
        clear.resize(64, 0);
        assert_eq!(opener.open(&mut clear), Err(OpenError::NotSealed));
        for sender in 1..=2 {
            let mut d = Sealer::new(&key(1), sender, CLUSTER, 5).seal(b"x");
            assert!(opener.open(&mut d).is_ok());
        }
        let mut d = Sealer::new(&key(1), 3, CLUSTER, 5).seal(b"x");
        assert_eq!(opener.open(&mut d), Err(OpenError::TooManySenders));
    }

    /// A datagram from node 4's address claiming node 2 is refused unopened and leaves
    /// node 2's replay window alone: node 2's own copy still opens afterwards.
    #[test]
    fn a_claimed_sender_must_be_the_source() {
        let mut node2 = Sealer::new(&key(1), 2, CLUSTER, 100);
        let mut opener = Opener::new(&key(1), CLUSTER, 8);
        let d = node2.seal(b"token");
        assert_eq!(
            opener.open_from(&mut d.clone(), 4),
            Err(OpenError::SenderMismatch)
        );
        assert_eq!(opener.open_from(&mut d.clone(), 2), Ok(&b"token"[..]));
        let mut clear = vec![0x52, 0x43, 1, 0];
        clear.resize(64, 0);
        assert_eq!(
            opener.open_from(&mut clear, 4),
            Err(OpenError::NotSealed),
            "not sealed comes first"
        );
    }
}
