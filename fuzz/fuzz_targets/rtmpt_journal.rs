//! What an RTMPT client sends, as a session's journal and a takeover's translator take
//! it (`docs/rtmpt.md`, "Sessions that survive their edge"): request bodies applied to
//! the journal (handshake bytes, then chunks of any messages), the server's bytes cut
//! into replies at message boundaries, then a takeover's translator fed both sides.
//! Must never panic; errors make the session unresumable or end it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftcast::edge::rtmpt::journal::{Journal, Outbound, Step};
use raftcast::edge::rtmpt::translate::Translator;

/// Splits `data` into parts whose lengths come from its own bytes.
fn parts(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (usize::from(n) * 24).min(tail.len());
        let (part, after) = tail.split_at(n);
        out.push(part);
        rest = after;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first bytes of a real session: the client's C0 C1 and C2, so the fuzzer's
    // bytes reach the chunk decoder.
    let mut journal = Journal::new();
    let mut outbound = Outbound::new();
    let handshake = [vec![3u8; 1537], vec![0u8; 1536]];
    for (seq, body) in handshake.iter().enumerate() {
        let step = Step { seq: seq as u64, body: body.clone().into(), after: outbound.positions().clone() };
        if journal.apply(&step).is_err() {
            return;
        }
    }
    let parts = parts(data);
    let (client, server) = parts.split_at(parts.len() / 2);
    for (i, body) in client.iter().enumerate() {
        if let Some(reply) = server.get(i) {
            if outbound.take_reply(reply, 64 * 1024).is_err() {
                break;
            }
        }
        let step = Step { seq: 2 + i as u64, body: body.to_vec().into(), after: outbound.positions().clone() };
        if journal.apply(&step).is_err() {
            return;
        }
    }
    let _ = Journal::restore(journal.snapshot());
    let Some(resume) = journal.resume_from(journal.last_seq().map_or(0, |s| s + 1)).cloned() else { return };
    let Ok((mut translator, _hello)) = Translator::start(&journal, &resume) else { return };
    for (i, part) in parts.iter().enumerate() {
        let ok = if i % 2 == 0 { translator.from_server(part).is_ok() } else { translator.from_client(part).is_ok() };
        if !ok {
            return;
        }
    }
});
