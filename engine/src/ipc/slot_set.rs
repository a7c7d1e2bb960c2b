//! A set of session slots in insertion order, each at most once: the sessions that
//! have events to publish or a backlog to drain, so that flushing events costs in
//! proportion to the sessions with work and not to every connected one (a thousand
//! idle connections must not slow the busy ones).
//!
//! Bounded by the slot count: a slot is in the list at most once.

#[derive(Debug, Default)]
pub struct SlotSet {
    member: Vec<bool>,
    list: Vec<usize>,
}

impl SlotSet {
    /// A set for slots `0..slots`.
    pub fn new(slots: usize) -> SlotSet {
        SlotSet {
            member: vec![false; slots],
            list: Vec::with_capacity(slots),
        }
    }

    /// Adds `slot` (no-op when present or out of range).
    pub fn insert(&mut self, slot: usize) {
        if let Some(m) = self.member.get_mut(slot)
            && !*m
        {
            *m = true;
            self.list.push(slot);
        }
    }

    /// The slots now in the set, in insertion order.
    pub fn slots(&self) -> &[usize] {
        &self.list
    }

    /// Empties the set into `out` (cleared first), keeping both allocations.
    pub fn take_into(&mut self, out: &mut Vec<usize>) {
        out.clear();
        for &slot in &self.list {
            self.member[slot] = false;
        }
        out.append(&mut self.list);
    }
}

#[cfg(test)]
mod tests {
    use super::SlotSet;

    #[test]
    fn each_slot_once_in_order_and_out_of_range_ignored() {
        let mut set = SlotSet::new(4);
        for slot in [2, 0, 2, 3, 0, 9] {
            set.insert(slot);
        }
        assert_eq!(set.slots(), &[2, 0, 3]);
        let mut out = vec![7];
        set.take_into(&mut out);
        assert_eq!(out, vec![2, 0, 3]);
        assert!(set.slots().is_empty());
        set.insert(0);
        assert_eq!(set.slots(), &[0], "taken slots can be added again");
    }
}
