//! The node's queue of events for its user, with whole messages of one delivered payload
//! kept as byte ranges of that payload until they are polled.
//!
//! A 64 KB datagram carries about a thousand small messages. Queued as one `Event` each,
//! they would be written out (about 100 bytes apiece, well past L1) and read back; kept
//! as 8-byte ranges behind one shared payload, the `Delivery` is built when it is polled,
//! while everything it needs is still in cache. What the user sees is the same: the
//! same events, in the same order.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use super::{Delivery, Event, Guarantee, NodeId, RingId};

/// Events in delivery order.
#[derive(Debug, Default)]
pub(super) struct EventQueue {
    items: VecDeque<Item>,
    /// The ranges of every `Item::Packed`, in order: the front one's `count` first.
    ranges: VecDeque<(u32, u32)>,
}

#[derive(Debug)]
enum Item {
    Event(Event),
    /// `count` whole messages of `payload`, their ranges at the front of `ranges`.
    Packed {
        payload: Bytes,
        sender: NodeId,
        ring_id: RingId,
        guarantee: Guarantee,
        count: u32,
    },
}

impl EventQueue {
    pub fn push(&mut self, event: Event) {
        self.items.push_back(Item::Event(event));
    }

    /// Starts queueing whole messages of `payload` (all from `sender`, on `ring_id`,
    /// with `guarantee`) in order with other events; they are queued when the batch is
    /// dropped or an event is pushed through it.
    pub fn batch<'a>(
        &'a mut self,
        payload: &'a Bytes,
        sender: NodeId,
        ring_id: RingId,
        guarantee: Guarantee,
    ) -> Batch<'a> {
        Batch {
            queue: self,
            payload,
            sender,
            ring_id,
            guarantee,
            // Ranges are kept as u32: a payload is one datagram, far below 4 GiB; should
            // one not be, its messages are queued one by one.
            fits: u32::try_from(payload.len()).is_ok(),
            run: 0,
        }
    }

    #[inline]
    pub fn pop(&mut self) -> Option<Event> {
        loop {
            let Item::Packed {
                payload,
                sender,
                ring_id,
                guarantee,
                count,
            } = self.items.front_mut()?
            else {
                let Some(Item::Event(event)) = self.items.pop_front() else {
                    unreachable!("the front item is an event");
                };
                return Some(event);
            };
            let (sender, ring_id, guarantee) = (*sender, *ring_id, *guarantee);
            // Counts are never 0 and add up to the ranges held; should that ever not
            // hold, the batch is dropped rather than a message misread.
            let range = if *count > 0 {
                self.ranges.pop_front()
            } else {
                None
            };
            let Some((start, end)) = range else {
                debug_assert!(false, "an event batch without its ranges");
                self.items.pop_front();
                continue;
            };
            let (start, end) = (start as usize, end as usize);
            *count -= 1;
            let message = if *count > 0 {
                payload.slice(start..end)
            } else {
                // The last message takes the batch's own reference to the payload.
                let Some(Item::Packed { mut payload, .. }) = self.items.pop_front() else {
                    unreachable!("the front item is a batch");
                };
                payload.truncate(end);
                payload.advance(start);
                payload
            };
            return Some(Event::Deliver(Delivery {
                sender,
                ring_id,
                guarantee,
                payload: message,
            }));
        }
    }
}

/// Whole messages of one payload being queued (see [`EventQueue::batch`]).
pub(super) struct Batch<'a> {
    queue: &'a mut EventQueue,
    payload: &'a Bytes,
    sender: NodeId,
    ring_id: RingId,
    guarantee: Guarantee,
    /// The payload's offsets fit in u32.
    fits: bool,
    /// Ranges pushed to `queue.ranges` that no `Item::Packed` counts yet.
    run: u32,
}

impl Batch<'_> {
    /// Queues the delivery of the whole message at `range` of the payload.
    pub fn push_range(&mut self, range: std::ops::Range<usize>) {
        if self.fits && self.run < u32::MAX {
            // `fits`: both ends are at most the payload's length.
            self.queue
                .ranges
                .push_back((range.start as u32, range.end as u32));
            self.run += 1;
        } else {
            self.push_event(Event::Deliver(Delivery {
                sender: self.sender,
                ring_id: self.ring_id,
                guarantee: self.guarantee,
                payload: self.payload.slice(range),
            }));
        }
    }

    /// Queues `event` after the messages pushed so far.
    pub fn push_event(&mut self, event: Event) {
        self.flush();
        self.queue.push(event);
    }

    /// The ranges pushed since the last flush are always the last ones in
    /// `queue.ranges`, so one item placed now counts exactly them.
    fn flush(&mut self) {
        if self.run > 0 {
            self.queue.items.push_back(Item::Packed {
                payload: self.payload.clone(),
                sender: self.sender,
                ring_id: self.ring_id,
                guarantee: self.guarantee,
                count: self.run,
            });
            self.run = 0;
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::totem::{ConfigurationChange, ConfigurationKind};

    fn deliver(sender: NodeId, payload: &[u8]) -> Event {
        Event::Deliver(Delivery {
            sender,
            ring_id: RingId { rep: 1, seq: 4 },
            guarantee: Guarantee::Agreed,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn config() -> Event {
        Event::Configuration(ConfigurationChange {
            kind: ConfigurationKind::Regular,
            ring_id: RingId { rep: 1, seq: 8 },
            members: vec![1, 2],
            left: vec![],
            joined: vec![2],
        })
    }

    /// Ranges of several payloads, interleaved with whole events, come out as the same
    /// events in the same order as if each had been queued on its own.
    #[test]
    fn batched_ranges_keep_order_and_content() {
        let ring_id = RingId { rep: 1, seq: 4 };
        let a = Bytes::from_static(b"aaBBcccDDDD");
        let b = Bytes::from_static(b"xyz");
        let a3 = a.slice(0..3);
        let mut queue = EventQueue::default();
        {
            let mut batch = queue.batch(&a, 1, ring_id, Guarantee::Agreed);
            batch.push_range(0..2);
            batch.push_range(2..4);
            batch.push_event(deliver(2, b"joined"));
            batch.push_range(4..7);
        }
        queue
            .batch(&a, 3, ring_id, Guarantee::Agreed)
            .push_range(7..11);
        // A batch with nothing in it queues nothing.
        drop(queue.batch(&b, 3, ring_id, Guarantee::Agreed));
        queue
            .batch(&b, 3, ring_id, Guarantee::Agreed)
            .push_range(0..3);
        queue
            .batch(&a3, 3, ring_id, Guarantee::Agreed)
            .push_range(1..3);
        queue.push(config());
        queue
            .batch(&b, 2, ring_id, Guarantee::Agreed)
            .push_range(1..1);
        let expected = vec![
            deliver(1, b"aa"),
            deliver(1, b"BB"),
            deliver(2, b"joined"),
            deliver(1, b"ccc"),
            deliver(3, b"DDDD"),
            deliver(3, b"xyz"),
            deliver(3, b"aB"),
            config(),
            deliver(2, b""),
        ];
        let mut got = Vec::new();
        while let Some(event) = queue.pop() {
            got.push(event);
        }
        assert_eq!(got, expected);
        assert!(queue.items.is_empty() && queue.ranges.is_empty());
    }

    #[test]
    fn batches_carry_their_guarantee_and_ring() {
        let p = Bytes::from_static(b"0123");
        let r1 = RingId { rep: 1, seq: 4 };
        let r2 = RingId { rep: 1, seq: 8 };
        let mut queue = EventQueue::default();
        queue.batch(&p, 1, r1, Guarantee::Agreed).push_range(0..1);
        queue.batch(&p, 1, r1, Guarantee::Safe).push_range(1..2);
        queue.batch(&p, 1, r2, Guarantee::Safe).push_range(2..3);
        let got: Vec<(RingId, Guarantee, Bytes)> = std::iter::from_fn(|| queue.pop())
            .map(|e| match e {
                Event::Deliver(d) => (d.ring_id, d.guarantee, d.payload),
                Event::Configuration(_) => panic!("no configuration queued"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (r1, Guarantee::Agreed, Bytes::from_static(b"0")),
                (r1, Guarantee::Safe, Bytes::from_static(b"1")),
                (r2, Guarantee::Safe, Bytes::from_static(b"2")),
            ]
        );
        assert_eq!(queue.items.len(), 0);
    }
}
