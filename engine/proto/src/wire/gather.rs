//! Bytes in pieces: a datagram (or its payload) into which large application messages
//! went by reference instead of by copy.
//!
//! The packer copies framing and small messages into one buffer and, for a message of
//! at least `pack_by_reference_min` bytes, ends that buffer and appends the message's
//! own `Bytes` as the next piece. The caller sends the pieces as one datagram (a
//! vectored send), and a node delivers its own large messages from those same `Bytes`:
//! the payload is never copied on the sending host. A datagram received from the
//! network is one piece.

use std::sync::Arc;

use bytes::Bytes;

/// The bytes of `head` followed by those of each piece of `tail`, in order.
#[derive(Clone, Debug, Default)]
pub struct Gather {
    head: Bytes,
    /// Shared: a datagram is cloned to be sent and kept, and its payload is a view of it,
    /// so a clone is one reference count, not an allocation. None for one piece (most
    /// datagrams), which keeps the common case small.
    tail: Option<Arc<[Bytes]>>,
}

impl Gather {
    /// `head` then the non-empty pieces of `tail` (one allocation for them).
    pub fn with_tail(head: Bytes, tail: Vec<Bytes>) -> Gather {
        let tail: Arc<[Bytes]> = tail.into_iter().filter(|p| !p.is_empty()).collect();
        Gather {
            head,
            tail: (!tail.is_empty()).then_some(tail),
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail().iter().map(Bytes::len).sum::<usize>()
    }

    fn tail(&self) -> &[Bytes] {
        self.tail.as_deref().unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One piece (or none): `head()` is all of it.
    pub fn is_contiguous(&self) -> bool {
        self.tail.is_none()
    }

    /// The first piece.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.head).chain(self.tail().iter())
    }

    /// The bytes as one `Bytes`: the head itself when contiguous, else a copy (for
    /// paths where a contiguous buffer is required and rare: sealing, recovery, tests).
    pub fn to_bytes(&self) -> Bytes {
        if self.tail.is_none() {
            return self.head.clone();
        }
        let mut out = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        Bytes::from(out)
    }

    /// [`Gather::to_bytes`], by value: a contiguous gather is its head, moved.
    pub fn into_bytes(self) -> Bytes {
        if self.tail.is_none() {
            return self.head;
        }
        self.to_bytes()
    }

    /// Everything after the first `n` bytes, which must lie in the head.
    ///
    /// Panics if `n > self.head().len()` (a caller bug: only headers are skipped).
    pub fn skip(&self, n: usize) -> Gather {
        Gather {
            head: self.head.slice(n..),
            tail: self.tail.clone(),
        }
    }
}

impl From<Bytes> for Gather {
    fn from(head: Bytes) -> Gather {
        Gather { head, tail: None }
    }
}

/// Equal bytes, however they are cut into pieces.
impl PartialEq for Gather {
    fn eq(&self, other: &Gather) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let mut a = self.pieces().flat_map(|p| p.iter());
        let mut b = other.pieces().flat_map(|p| p.iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (x, y) if x == y => {}
                _ => return false,
            }
        }
    }
}

impl Eq for Gather {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_as_their_concatenation() {
        let g = Gather::with_tail(
            Bytes::from_static(b"ab"),
            vec![Bytes::new(), Bytes::from_static(b"cde")],
        );
        assert_eq!(g.len(), 5);
        assert_eq!(g.pieces().count(), 2, "the empty piece is dropped");
        assert!(!g.is_contiguous());
        assert_eq!(&g.to_bytes()[..], b"abcde");
        assert_eq!(&g.skip(1).to_bytes()[..], b"bcde");
        assert_eq!(g, Gather::from(Bytes::from_static(b"abcde")));
        assert_ne!(g, Gather::from(Bytes::from_static(b"abcdf")));
        assert_ne!(g, Gather::from(Bytes::from_static(b"abcd")));
    }

    #[test]
    fn a_contiguous_gather_is_its_head_without_a_copy() {
        let b = Bytes::from(vec![7u8; 100]);
        let g = Gather::from(b.clone());
        assert!(g.is_contiguous());
        assert_eq!(g.to_bytes().as_ptr(), b.as_ptr());
        assert!(Gather::with_tail(Bytes::new(), Vec::new()).is_contiguous());
        assert!(Gather::default().is_empty());
    }
}
