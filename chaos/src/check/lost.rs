//! Lost acknowledged writes in the append-only set: every element whose add was
//! acknowledged must be in the final (linearizable) read through every origin; no
//! element that was never added may appear.

use std::collections::BTreeSet;

use crate::history::{AddOutcome, FinalRead, SetAdd};

/// The set checker's verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetVerdict {
    /// Acknowledged adds.
    pub acked: usize,
    /// Acknowledged adds missing from at least one final read.
    pub lost: Vec<String>,
    /// Elements read that no client ever tried to add.
    pub unexpected: Vec<String>,
    /// Origins whose final read failed (nothing could be verified through them).
    pub unread: Vec<u32>,
}

pub fn check(adds: &[SetAdd], reads: &[FinalRead]) -> SetVerdict {
    let attempted: BTreeSet<&str> = adds.iter().map(|a| a.element.as_str()).collect();
    let acked: Vec<&str> = adds.iter().filter(|a| a.outcome == AddOutcome::Acked).map(|a| a.element.as_str()).collect();
    let mut v = SetVerdict { acked: acked.len(), ..Default::default() };
    let mut lost = BTreeSet::new();
    let mut unexpected = BTreeSet::new();
    for read in reads {
        let Some(elements) = &read.elements else {
            v.unread.push(read.origin);
            continue;
        };
        let seen: BTreeSet<&str> = elements.iter().map(String::as_str).collect();
        lost.extend(acked.iter().filter(|e| !seen.contains(*e)).map(|e| e.to_string()));
        unexpected.extend(seen.iter().filter(|e| !attempted.contains(*e)).map(|e| e.to_string()));
    }
    if reads.is_empty() {
        v.unread.push(0);
    }
    v.lost = lost.into_iter().collect();
    v.unexpected = unexpected.into_iter().collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(e: &str, outcome: AddOutcome) -> SetAdd {
        SetAdd { element: e.into(), origin: 1, call_us: 0, ret_us: Some(1), outcome }
    }

    fn read(origin: u32, e: &[&str]) -> FinalRead {
        FinalRead { origin, elements: Some(e.iter().map(|s| s.to_string()).collect()) }
    }

    #[test]
    fn every_acked_add_present_passes_and_unknown_ones_may_be_missing() {
        let adds = [add("a", AddOutcome::Acked), add("b", AddOutcome::Unknown), add("c", AddOutcome::Failed)];
        let v = check(&adds, &[read(1, &["a"]), read(2, &["a", "b"])]);
        assert!(v.lost.is_empty() && v.unexpected.is_empty() && v.unread.is_empty(), "{v:?}");
        assert_eq!(v.acked, 1);
    }

    #[test]
    fn a_lost_write_is_flagged() {
        let adds = [add("a", AddOutcome::Acked), add("b", AddOutcome::Acked)];
        let v = check(&adds, &[read(1, &["a", "b"]), read(3, &["a"])]);
        assert_eq!(v.lost, vec!["b".to_string()]);
    }

    #[test]
    fn a_phantom_element_and_an_unverifiable_origin_are_flagged() {
        let adds = [add("a", AddOutcome::Acked)];
        let v = check(&adds, &[read(1, &["a", "zzz"])]);
        assert_eq!(v.unexpected, vec!["zzz".to_string()]);
        let v = check(&adds, &[FinalRead { origin: 2, elements: None }]);
        assert_eq!(v.unread, vec![2]);
    }
}
