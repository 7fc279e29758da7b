//! At most one owner per stream per committed epoch, from what every origin showed in
//! `GET /streams?stale=true`. An epoch is the log index of a claim, so two origins
//! showing different owners at one epoch means their committed logs diverged.
//!
//! What this can observe: claims as each origin applied them, sampled a few times a
//! second. A claim that lived shorter than a sample period is not seen.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::ClaimSeen;

/// The owners checker's verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnersVerdict {
    /// Most distinct owners seen for one stream at one epoch (0 if no claim was seen).
    pub max_owners_per_epoch: usize,
    /// `(stream, epoch, owners)` with more than one owner.
    pub conflicts: Vec<(String, u64, Vec<u32>)>,
    /// Distinct (stream, epoch) claims seen.
    pub claims: usize,
}

pub fn check(seen: &[ClaimSeen]) -> OwnersVerdict {
    let mut owners: BTreeMap<(&str, u64), BTreeSet<u32>> = BTreeMap::new();
    for c in seen {
        owners.entry((c.stream.as_str(), c.epoch)).or_default().insert(c.owner);
    }
    OwnersVerdict {
        max_owners_per_epoch: owners.values().map(BTreeSet::len).max().unwrap_or(0),
        conflicts: owners
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|((s, e), o)| (s.to_string(), *e, o.iter().copied().collect()))
            .collect(),
        claims: owners.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(via: u32, epoch: u64, owner: u32) -> ClaimSeen {
        ClaimSeen { t_us: 0, via, stream: "live/x".into(), epoch, owner }
    }

    #[test]
    fn one_owner_per_epoch_passes() {
        let v = check(&[c(1, 10, 2), c(2, 10, 2), c(3, 25, 1), c(1, 25, 1)]);
        assert_eq!(v.max_owners_per_epoch, 1);
        assert_eq!(v.claims, 2);
        assert!(v.conflicts.is_empty());
    }

    #[test]
    fn two_owners_at_one_epoch_are_flagged() {
        let v = check(&[c(1, 10, 2), c(3, 10, 3)]);
        assert_eq!(v.max_owners_per_epoch, 2);
        assert_eq!(v.conflicts, vec![("live/x".to_string(), 10, vec![2, 3])]);
    }
}
