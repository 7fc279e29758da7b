//! Per-key linearizability of the register history: Wing & Gong's search with Lowe's
//! cache, as Porcupine does it. Operations whose outcome is unknown return "at
//! infinity": they may take effect at any point after their call, or (equivalently for
//! every later observation) never.
//!
//! Writes whose outcome was learned after the run by resending them with their
//! idempotency key (`resolved`) answer late; their version still pins them: a write
//! that made version `v` took effect before any operation that observed a version
//! `>= v` answered, so its return is pulled back to the earliest such answer (sound and
//! complete: every valid order already places it there). This keeps the search small.
//!
//! The model is one shared object per key: state `(version, value)`; every applied
//! write bumps the version by one, a CAS applies only at the expected version, a 412
//! reports the version it saw. Knows no I/O and no HTTP.

use std::collections::{BTreeMap, HashSet};

use crate::history::{RegisterInput, RegisterOp, RegisterOutput};

/// `(object version, slot value)`.
type State = (u64, Option<i64>);

/// Most search steps per key before giving up (reported as not proven linearizable).
const STEP_BUDGET: u64 = 20_000_000;

/// Why a key's history is not linearizable.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub key: u32,
    /// The operation no ordering could fit in (its index in the key's history).
    pub op: Box<RegisterOp>,
    pub reason: String,
}

/// The model's step: the state after `input` answered `output` at `s`, or `None` when
/// that answer is impossible there.
fn step(s: State, input: RegisterInput, output: RegisterOutput) -> Option<State> {
    use RegisterInput as I;
    use RegisterOutput as O;
    match (input, output) {
        (I::Read, O::Read { version, value }) => (s == (version, value)).then_some(s),
        (I::Read, O::Unknown) => Some(s),
        (I::Write { value }, O::Written { version }) => (version == s.0 + 1).then_some((version, Some(value))),
        (I::Write { value }, O::Unknown) => Some((s.0 + 1, Some(value))),
        (I::Cas { expect, value }, O::Written { version }) => {
            (s.0 == expect && version == expect + 1).then_some((version, Some(value)))
        }
        (I::Cas { expect, .. }, O::Mismatch { current }) => (s.0 != expect && s.0 == current).then_some(s),
        (I::Cas { expect, value }, O::Unknown) => Some(if s.0 == expect { (expect + 1, Some(value)) } else { s }),
        _ => None,
    }
}

/// Checks every key; the first violation per key.
pub fn check(history: &[RegisterOp]) -> Vec<Violation> {
    let mut keys: BTreeMap<u32, Vec<RegisterOp>> = BTreeMap::new();
    for op in history {
        // A read nobody heard the answer to, or a request never sent, constrains nothing.
        let unheard_read = op.input == RegisterInput::Read && op.output == RegisterOutput::Unknown;
        if unheard_read || op.output == RegisterOutput::Failed {
            continue;
        }
        keys.entry(op.key).or_default().push(op.clone());
    }
    let mut violations = Vec::new();
    for (key, mut ops) in keys {
        if let Err(v) = tighten(key, &mut ops) {
            violations.push(v);
            continue;
        }
        let refs: Vec<&RegisterOp> = ops.iter().collect();
        if let Err(v) = check_key(key, &refs) {
            violations.push(v);
        }
    }
    violations
}

/// The version an operation saw or made.
fn observed(op: &RegisterOp) -> Option<u64> {
    match op.output {
        RegisterOutput::Read { version, .. } | RegisterOutput::Written { version } => Some(version),
        RegisterOutput::Mismatch { current } => Some(current),
        RegisterOutput::Unknown | RegisterOutput::Failed => None,
    }
}

/// Pulls each resolved operation's return back to the earliest answer of an operation
/// that observed a version it must precede (see the module doc).
fn tighten(key: u32, ops: &mut [RegisterOp]) -> Result<(), Violation> {
    // (observed version, answer time) of operations answered during the run.
    let mut seen: Vec<(u64, u64)> =
        ops.iter().filter(|o| !o.resolved).filter_map(|o| Some((observed(o)?, o.ret_us?))).collect();
    seen.sort_unstable();
    // suffix[i] = earliest answer among seen[i..].
    let mut suffix = vec![u64::MAX; seen.len() + 1];
    for i in (0..seen.len()).rev() {
        suffix[i] = suffix[i + 1].min(seen[i].1);
    }
    for op in ops.iter_mut().filter(|o| o.resolved) {
        let threshold = match op.output {
            RegisterOutput::Written { version } => version,
            RegisterOutput::Mismatch { current } => current + 1,
            _ => continue,
        };
        let bound = suffix[seen.partition_point(|(v, _)| *v < threshold)];
        if bound < op.call_us {
            return Err(Violation {
                key,
                op: Box::new(op.clone()),
                reason: format!("version {threshold} was observed before the operation that made it was sent"),
            });
        }
        op.ret_us = Some(op.ret_us.unwrap_or(u64::MAX).min(bound));
    }
    Ok(())
}

const NONE: usize = usize::MAX;

/// Wing & Gong over one key's operations.
fn check_key(key: u32, ops: &[&RegisterOp]) -> Result<(), Violation> {
    // Entries: (time, 0 = call / 1 = return, op index). Calls sort before returns at the
    // same instant (concurrent: the lenient reading of a tie).
    let mut entries: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        entries.push((op.call_us, 0, i));
        let ret = match op.output {
            RegisterOutput::Unknown => u64::MAX,
            _ => op.ret_us.unwrap_or(u64::MAX),
        };
        entries.push((ret.max(op.call_us), 1, i));
    }
    entries.sort();
    let n = entries.len();
    let head = n;
    // Doubly linked list over entries with a head sentinel at index n.
    let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
    next.push(if n == 0 { NONE } else { 0 });
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { head } else { i - 1 }).collect();
    prev.push(NONE);
    let mut ret_of = vec![0usize; ops.len()];
    for (idx, e) in entries.iter().enumerate() {
        if e.1 == 1 {
            ret_of[e.2] = idx;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = (0, None);
    let mut entry = next[head];
    let mut steps = 0u64;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, q) = (prev[e], next[e]);
        next[p] = q;
        if q != NONE {
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, q) = (prev[e], next[e]);
        next[p] = e;
        if q != NONE {
            prev[q] = e;
        }
    };

    while next[head] != NONE {
        steps += 1;
        if steps > STEP_BUDGET {
            return Err(Violation {
                key,
                op: Box::new(ops[entries[next[head]].2].clone()),
                reason: format!("search budget of {STEP_BUDGET} steps exhausted: not proven linearizable"),
            });
        }
        let (_, kind, i) = entries[entry];
        if kind == 0 {
            let op = ops[i];
            if let Some(new_state) = step(state, op.input, op.output) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), new_state)) {
                    calls.push((entry, state));
                    state = new_state;
                    linearized = lin;
                    let r = ret_of[i];
                    lift(&mut next, &mut prev, r);
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
            if entry == NONE {
                // Cannot happen: a call's return is always later in the list.
                entry = next[head];
            }
        } else {
            let Some((call, saved)) = calls.pop() else {
                return Err(Violation {
                    key,
                    op: Box::new(ops[i].clone()),
                    reason: "no order of the operations before its answer explains it".into(),
                });
            };
            let ci = entries[call].2;
            state = saved;
            linearized[ci / 64] &= !(1 << (ci % 64));
            unlift(&mut next, &mut prev, call);
            unlift(&mut next, &mut prev, ret_of[ci]);
            entry = next[call];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterInput as I;
    use RegisterOutput as O;

    fn op(client: u32, call: u64, ret: Option<u64>, input: I, output: O) -> RegisterOp {
        RegisterOp { client, origin: 1, key: 0, call_us: call, ret_us: ret, input, output, idem: None, resolved: false }
    }

    fn resolved(mut o: RegisterOp) -> RegisterOp {
        o.resolved = true;
        o
    }

    #[test]
    fn resolved_writes_are_pinned_by_their_version() {
        // Many concurrent late-resolved writes stay cheap: each is pulled back to the
        // read that saw its version.
        let mut h = Vec::new();
        for i in 0..60u64 {
            let t = i * 100;
            h.push(resolved(op(1, t, Some(1_000_000), I::Write { value: i as i64 }, O::Written { version: i + 1 })));
            h.push(op(2, t + 50, Some(t + 60), I::Read, O::Read { version: i + 1, value: Some(i as i64) }));
        }
        assert_eq!(check(&h), vec![]);
        // A version read before the write that made it was even sent.
        let bad = vec![
            op(2, 0, Some(10), I::Read, O::Read { version: 1, value: Some(3) }),
            resolved(op(1, 20, Some(1_000), I::Write { value: 3 }, O::Written { version: 1 })),
        ];
        assert_eq!(check(&bad).len(), 1);
    }

    #[test]
    fn requests_never_sent_are_ignored() {
        let h = vec![
            op(1, 0, None, I::Write { value: 1 }, O::Failed),
            op(2, 20, Some(30), I::Read, O::Read { version: 0, value: None }),
        ];
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn sequential_history_passes() {
        let h = vec![
            op(1, 0, Some(10), I::Write { value: 1 }, O::Written { version: 1 }),
            op(2, 20, Some(30), I::Read, O::Read { version: 1, value: Some(1) }),
            op(1, 40, Some(50), I::Cas { expect: 1, value: 2 }, O::Written { version: 2 }),
            op(2, 60, Some(70), I::Cas { expect: 1, value: 3 }, O::Mismatch { current: 2 }),
            op(2, 80, Some(90), I::Read, O::Read { version: 2, value: Some(2) }),
        ];
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn a_stale_read_is_flagged() {
        let h = vec![
            op(1, 0, Some(10), I::Write { value: 1 }, O::Written { version: 1 }),
            op(1, 20, Some(30), I::Write { value: 2 }, O::Written { version: 2 }),
            // Starts after the second write was acknowledged, yet sees the first.
            op(2, 40, Some(50), I::Read, O::Read { version: 1, value: Some(1) }),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_flagged() {
        let h = vec![
            op(1, 0, Some(10), I::Write { value: 7 }, O::Written { version: 1 }),
            op(2, 20, Some(30), I::Read, O::Read { version: 0, value: None }),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let h = vec![
            op(1, 0, Some(100), I::Write { value: 1 }, O::Written { version: 2 }),
            op(2, 10, Some(90), I::Write { value: 2 }, O::Written { version: 1 }),
            op(3, 20, Some(80), I::Read, O::Read { version: 1, value: Some(2) }),
            op(3, 120, Some(130), I::Read, O::Read { version: 2, value: Some(1) }),
        ];
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // Applied: a later read sees it.
        let applied = vec![
            op(1, 0, None, I::Write { value: 5 }, O::Unknown),
            op(2, 50, Some(60), I::Read, O::Read { version: 1, value: Some(5) }),
        ];
        assert_eq!(check(&applied), vec![]);
        // Not applied: a later write gets version 1.
        let dropped = vec![
            op(1, 0, None, I::Write { value: 5 }, O::Unknown),
            op(2, 50, Some(60), I::Write { value: 6 }, O::Written { version: 1 }),
            op(2, 70, Some(80), I::Read, O::Read { version: 1, value: Some(6) }),
        ];
        assert_eq!(check(&dropped), vec![]);
        // But a value nobody wrote can never be read.
        let phantom = vec![
            op(1, 0, None, I::Write { value: 5 }, O::Unknown),
            op(2, 50, Some(60), I::Read, O::Read { version: 1, value: Some(9) }),
        ];
        assert_eq!(check(&phantom).len(), 1);
    }

    #[test]
    fn a_cas_that_succeeded_at_the_wrong_version_is_flagged() {
        let h = vec![
            op(1, 0, Some(10), I::Write { value: 1 }, O::Written { version: 1 }),
            op(1, 20, Some(30), I::Write { value: 2 }, O::Written { version: 2 }),
            op(2, 40, Some(50), I::Cas { expect: 1, value: 3 }, O::Written { version: 2 }),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn keys_are_checked_separately_and_a_big_history_is_fast() {
        let mut h = Vec::new();
        let mut t = 0;
        for k in 0..4u32 {
            for i in 0..5_000u64 {
                let mut w = op(1, t, Some(t + 5), I::Write { value: i as i64 }, O::Written { version: i + 1 });
                w.key = k;
                let mut r = op(2, t + 1, Some(t + 7), I::Read, O::Read { version: i + 1, value: Some(i as i64) });
                r.key = k;
                h.push(w);
                h.push(r);
                t += 10;
            }
        }
        let started = std::time::Instant::now();
        assert_eq!(check(&h), vec![]);
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    }
}
