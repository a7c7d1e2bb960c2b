//! The checkers over client histories that need no cluster state: agreed order and
//! virtual synchrony (docs/invariants.md, "Clients").
//!
//! A history is what one connection saw, in order, as keys: a message key is the
//! message's id, a confchg key is its content together with the ring it was seen in
//! (the ring of the last completed sync) and how many equal confchgs the history saw
//! before it. Two connections that saw the same confchg therefore hold equal keys.

use std::collections::{BTreeMap, BTreeSet};

/// What a key is to one history.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Message,
    /// A confchg of the history's group that keeps it a member.
    View,
    /// The confchg that takes the history out of its group (its own leave).
    Exit,
}

/// How two histories that saw the same view disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disagreement<K> {
    /// They went on to the same next confchg, or both lived to a quiescent end in the
    /// view, but delivered different messages in between.
    Messages(K),
    /// Their next confchgs were seen in the same ring but differ.
    NextView(K),
}

/// One history's views: each view, the confchg that ended it (if any), and the
/// messages in between.
type Segments<'a, K> = BTreeMap<&'a K, (Option<&'a K>, BTreeSet<&'a K>)>;

fn segments<'a, K: Ord>(keys: &'a [K], classify: impl Fn(&K) -> Step) -> Segments<'a, K> {
    let mut out = BTreeMap::new();
    let mut current: Option<(&K, BTreeSet<&K>)> = None;
    for k in keys {
        let step = classify(k);
        if step == Step::Message {
            if let Some((_, messages)) = current.as_mut() {
                messages.insert(k);
            }
            continue;
        }
        if let Some((view, messages)) = current.take() {
            out.insert(view, (Some(k), messages));
        }
        if step == Step::View {
            current = Some((k, BTreeSet::new()));
        }
    }
    if let Some((view, messages)) = current {
        out.insert(view, (None, messages));
    }
    out
}

/// Virtual synchrony at the group level. Two histories that pass together from one
/// view (a confchg both saw as members) to the next (the same next confchg in both)
/// deliver the same messages in between; two that both end (`.1`: alive at a quiescent
/// end) in the same view delivered the same messages after it; two whose next confchgs
/// were both seen in one ring (`ring_of`) saw the same next confchg, because members
/// that move together into a ring agree on what happened before it. Returns the pairs
/// (by index) and what they disagree on.
pub fn synchrony_violations<K: Ord + Clone, R: PartialEq>(
    logs: &[(&[K], bool)],
    classify: impl Fn(usize, &K) -> Step,
    ring_of: impl Fn(&K) -> R,
) -> Vec<(usize, usize, Disagreement<K>)> {
    let segments: Vec<Segments<'_, K>> = logs
        .iter()
        .enumerate()
        .map(|(log, (keys, _))| segments(keys, |k| classify(log, k)))
        .collect();
    let mut out = Vec::new();
    for (a, sa) in segments.iter().enumerate() {
        for (b, sb) in segments.iter().enumerate().skip(a + 1) {
            let found = sa.iter().find_map(|(view, (next_a, msgs_a))| {
                let (next_b, msgs_b) = sb.get(view)?;
                let same_end = match (next_a, next_b) {
                    (Some(x), Some(y)) if x != y => {
                        return (ring_of(x) == ring_of(y))
                            .then(|| Disagreement::NextView((*view).clone()));
                    }
                    (Some(_), Some(_)) => true,
                    (None, None) => logs[a].1 && logs[b].1,
                    _ => false,
                };
                (same_end && msgs_a != msgs_b).then(|| Disagreement::Messages((*view).clone()))
            });
            if let Some(d) = found {
                out.push((a, b, d));
            }
        }
    }
    out
}

/// Pairs of histories (by index) and a key the second orders differently from the
/// first, relative to the keys they share (agreed order, across groups too: a
/// connection's history spans every group it was in). Also a history that repeats a
/// key, as the pair (a, a).
pub fn order_violations<K: Ord + Clone>(logs: &[&[K]]) -> Vec<(usize, usize, K)> {
    let index: Vec<BTreeMap<&K, usize>> = logs
        .iter()
        .map(|keys| keys.iter().enumerate().map(|(i, k)| (k, i)).collect())
        .collect();
    let mut out = Vec::new();
    for (a, keys) in logs.iter().enumerate() {
        if index[a].len() != keys.len() {
            let mut seen = BTreeSet::new();
            let dup = keys.iter().find(|k| !seen.insert(*k)).expect("a repeat");
            out.push((a, a, dup.clone()));
        }
    }
    for (a, keys) in logs.iter().enumerate() {
        for (b, other) in index.iter().enumerate().skip(a + 1) {
            let mut last = None;
            for k in keys.iter() {
                let Some(&j) = other.get(k) else { continue };
                if last.is_some_and(|l| j < l) {
                    out.push((a, b, k.clone()));
                    break;
                }
                last = Some(j);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself catches what it must: a swapped pair, a repeat.
    #[test]
    fn order_checker_finds_disagreements_and_repeats() {
        let a = [1, 2, 3, 4];
        let b = [9, 1, 3, 2];
        let c = [1, 3, 5, 4];
        let d = [2, 2];
        assert_eq!(order_violations(&[&a, &c]), vec![]);
        assert_eq!(order_violations(&[&a, &b]), vec![(0, 1, 3)]);
        assert_eq!(order_violations(&[&d]), vec![(0, 0, 2)]);
    }

    // Views are negative, messages positive, -9 is an exit; views -100.. are of
    // ring 1, the others of ring 0.
    fn step(_: usize, k: &i32) -> Step {
        match *k {
            -9 => Step::Exit,
            k if k < 0 => Step::View,
            _ => Step::Message,
        }
    }

    fn ring(k: &i32) -> i32 {
        i32::from(*k <= -100)
    }

    fn check(a: &[i32], b: &[i32], alive: bool) -> Vec<(usize, usize, Disagreement<i32>)> {
        synchrony_violations(&[(a, true), (b, alive)], step, ring)
    }

    /// The synchrony checker catches a member that missed a message between two views
    /// both saw, and one that missed a message after the last view, but only when both
    /// lived to the end.
    #[test]
    fn synchrony_checker_finds_missing_messages() {
        let a = [-1, 1, 2, -2, 3];
        assert_eq!(check(&a, &[-1, 2, 1, -2, 3], true), vec![]);
        let missed = vec![(0, 1, Disagreement::Messages(-1))];
        assert_eq!(check(&a, &[-1, 1, -2, 3], true), missed);
        let missed_last = vec![(0, 1, Disagreement::Messages(-2))];
        assert_eq!(check(&a, &[-1, 1, 2, -2], true), missed_last);
        assert_eq!(check(&a, &[-1, 1, 2, -2], false), vec![]);
        // Another next view, of another ring (a partition): not comparable.
        assert_eq!(check(&a, &[-1, 1, -100, 3], true), vec![]);
        // After its exit a history gets nothing; it is compared up to the exit only.
        let f = [-1, 1, 2, -9];
        assert_eq!(check(&f, &[-1, 1, 2, -9, 3], true), vec![]);
        // ... and in the same ring everybody sees that leave next.
        assert_eq!(
            check(&a, &f, true),
            vec![(0, 1, Disagreement::NextView(-1))]
        );
        assert_eq!(check(&f, &[-1, 1, 2, -9, -2], true), vec![]);
        assert_eq!(check(&f, &[-1, 1, -9], true), missed);
    }

    /// Two members that saw one view and whose next confchgs are of one ring must have
    /// seen the same next confchg.
    #[test]
    fn synchrony_checker_finds_diverging_views() {
        let a = [-1, 1, -2, 3];
        let b = [-1, 1, -3, 3];
        assert_eq!(
            check(&a, &b, true),
            vec![(0, 1, Disagreement::NextView(-1))]
        );
        let c = [-100, 1, -101];
        let d = [-100, 1, -102];
        assert_eq!(
            check(&c, &d, true),
            vec![(0, 1, Disagreement::NextView(-100))]
        );
    }
}
