//! One RTMPT session's request bookkeeping, with no I/O and no clock: which request
//! paths are tunnel commands, which sequence number comes next, the reply kept for a
//! repeated request, and the polling-interval byte that opens every reply.
//!
//! Never knows HTTP, sockets or the RTMP session behind the tunnel.

use bytes::{BufMut, Bytes, BytesMut};

/// What a `POST` to the edge's HTTP port asks of the tunnel, read from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/fcs/ident2`: Flash Player's probe for an FMS identity; answered 404 as Red5
    /// and FMS do, after which clients go on with `/open/1`.
    Ident,
    /// `/open/1`: a new session; the reply is its id and a newline.
    Open,
    /// `/send/{id}/{seq}`: RTMP bytes from the client (the body), and the reply
    /// carries what the server has for it.
    Send { id: String, seq: u64 },
    /// `/idle/{id}/{seq}`: a poll; the body (ffmpeg sends one zero byte) is ignored.
    Idle { id: String, seq: u64 },
    /// `/close/{id}/{seq}`: the client ends the session.
    Close { id: String, seq: u64 },
}

/// Why a path that looks like a tunnel command is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// Not `/{send|idle|close}/{id}/{seq}` with a decimal `seq`.
    #[error("RTMPT paths are /open/1, /send/ID/SEQ, /idle/ID/SEQ and /close/ID/SEQ")]
    Malformed,
}

impl Command {
    /// The tunnel command a `POST` path names: `None` when the path is not the
    /// tunnel's at all (other routes keep it), `Some(Err)` when it starts like one but
    /// is malformed.
    pub fn parse(path: &str) -> Option<Result<Command, BadPath>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let verb = parts.next()?;
        let rest: Vec<&str> = parts.collect();
        let session = |rest: &[&str]| match rest {
            [id, seq] if !id.is_empty() => {
                let seq = seq.parse().map_err(|_| BadPath::Malformed)?;
                Ok(((*id).to_owned(), seq))
            }
            _ => Err(BadPath::Malformed),
        };
        Some(match verb {
            "fcs" => Ok(Command::Ident),
            "open" => Ok(Command::Open),
            "send" => session(&rest).map(|(id, seq)| Command::Send { id, seq }),
            "idle" => session(&rest).map(|(id, seq)| Command::Idle { id, seq }),
            "close" => session(&rest).map(|(id, seq)| Command::Close { id, seq }),
            _ => return None,
        })
    }

    /// The request kind, for metrics.
    pub fn kind(&self) -> Kind {
        match self {
            Command::Ident => Kind::Ident,
            Command::Open => Kind::Open,
            Command::Send { .. } => Kind::Send,
            Command::Idle { .. } => Kind::Idle,
            Command::Close { .. } => Kind::Close,
        }
    }
}

/// The kinds of tunnel request, as `/metrics` labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ident,
    Open,
    Send,
    Idle,
    Close,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Ident, Kind::Open, Kind::Send, Kind::Idle, Kind::Close];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Ident => "ident",
            Kind::Open => "open",
            Kind::Send => "send",
            Kind::Idle => "idle",
            Kind::Close => "close",
        }
    }
}

/// The polling-interval byte, as Red5 computes it (clients wait about this many
/// tens of milliseconds before their next idle poll): 1 while data flows; after
/// [`PollingDelay::PATIENCE`] empty replies in a row it doubles (3, 5, 9, 17) up to
/// 33 (`0x21`). 0 says the server closed the session.
#[derive(Debug, Clone, Default)]
pub struct PollingDelay {
    /// Empty replies in a row.
    empty: u32,
    /// The delay before the `+ 1` of the byte.
    delay: u8,
}

impl PollingDelay {
    /// Empty replies in a row before the interval starts to grow.
    pub const PATIENCE: u32 = 10;
    /// The largest delay (the byte is one more: `0x21`).
    pub const MAX: u8 = 32;
    /// The byte that says the session is closed.
    pub const CLOSED: u8 = 0;

    /// The byte for a reply; `flowed` says whether bytes went either way with it.
    pub fn next(&mut self, flowed: bool) -> u8 {
        if flowed {
            self.empty = 0;
            self.delay = 0;
        } else {
            self.empty += 1;
            if self.empty > Self::PATIENCE {
                self.delay = self.delay.max(1).saturating_mul(2).min(Self::MAX);
            }
        }
        self.delay + 1
    }
}

/// What to do with a request of an open session, given its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next request: carry it out.
    Fresh,
    /// The last request again (its reply was lost): the same reply, nothing redone.
    Repeat(Bytes),
    /// Neither the next nor the last.
    OutOfOrder { expected: u64 },
}

/// A session's sequence numbers and its last reply.
///
/// The first request after `/open` may be numbered 0 (ffmpeg) or 1; every later one
/// is one more than the last. The last reply is kept until the next request, so a
/// request repeated (its reply lost on the way) is answered again without sending its
/// body into the session twice: requests are idempotent by `(session, seq)`.
#[derive(Debug, Default)]
pub struct Exchange {
    last: Option<(u64, Bytes)>,
    delay: PollingDelay,
}

impl Exchange {
    /// The exchange of a session taken over after request `last`, whose reply this
    /// edge never had: a repeat of `last` is the caller's to answer afresh.
    pub fn resumed(last: u64) -> Exchange {
        Exchange { last: Some((last, Bytes::new())), delay: PollingDelay::default() }
    }

    pub fn check(&self, seq: u64) -> Verdict {
        match &self.last {
            None if seq <= 1 => Verdict::Fresh,
            None => Verdict::OutOfOrder { expected: 0 },
            Some((last, reply)) if *last == seq => Verdict::Repeat(reply.clone()),
            Some((last, _)) if last.checked_add(1) == Some(seq) => Verdict::Fresh,
            Some((last, _)) => Verdict::OutOfOrder { expected: last.saturating_add(1) },
        }
    }

    /// The reply to fresh request `seq`: the polling byte, then `data` from the
    /// server. `sent` says whether the request carried bytes for the server;
    /// `closed` that the session behind the tunnel has ended and `data` is its last.
    pub fn answer(&mut self, seq: u64, sent: bool, data: &[u8], closed: bool) -> Bytes {
        let interval = self.delay.next(sent || !data.is_empty());
        let mut reply = BytesMut::with_capacity(1 + data.len());
        reply.put_u8(if closed && data.is_empty() { PollingDelay::CLOSED } else { interval });
        reply.put_slice(data);
        let reply = reply.freeze();
        self.last = Some((seq, reply.clone()));
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_commands_and_leave_other_routes_alone() {
        assert_eq!(Command::parse("/open/1"), Some(Ok(Command::Open)));
        assert_eq!(Command::parse("/fcs/ident2"), Some(Ok(Command::Ident)));
        assert_eq!(Command::parse("/send/ab12/7"), Some(Ok(Command::Send { id: "ab12".into(), seq: 7 })));
        assert_eq!(Command::parse("/idle/ab12/0"), Some(Ok(Command::Idle { id: "ab12".into(), seq: 0 })));
        assert_eq!(Command::parse("/close/ab12/9"), Some(Ok(Command::Close { id: "ab12".into(), seq: 9 })));
        for bad in ["/send/ab12", "/send/ab12/x", "/send//3", "/idle/a/1/2", "/close/a/-1"] {
            assert_eq!(Command::parse(bad), Some(Err(BadPath::Malformed)), "{bad}");
        }
        for other in ["/drain", "/live/x.flv", "/shared-objects/chat/messages", "", "/"] {
            assert_eq!(Command::parse(other), None, "{other}");
        }
    }

    #[test]
    fn the_polling_byte_is_one_while_data_flows_and_grows_to_0x21_when_idle() {
        let mut d = PollingDelay::default();
        assert_eq!(d.next(true), 1);
        let idle: Vec<u8> = (0..16).map(|_| d.next(false)).collect();
        assert_eq!(idle, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 5, 9, 17, 33, 33]);
        assert_eq!(d.next(true), 1, "data resets the interval");
        assert_eq!(d.next(false), 1);
    }

    #[test]
    fn sequence_numbers_run_on_and_a_repeat_gets_the_same_reply() {
        let mut x = Exchange::default();
        assert_eq!(x.check(5), Verdict::OutOfOrder { expected: 0 });
        assert_eq!(x.check(0), Verdict::Fresh);
        let first = x.answer(0, true, b"S0S1", false);
        assert_eq!(&first[..], b"\x01S0S1");
        assert_eq!(x.check(0), Verdict::Repeat(first.clone()), "a lost reply is answered again");
        assert_eq!(x.check(2), Verdict::OutOfOrder { expected: 1 });
        assert_eq!(x.check(1), Verdict::Fresh);
        let second = x.answer(1, false, b"", false);
        assert_eq!(&second[..], b"\x01");
        assert_eq!(x.check(0), Verdict::OutOfOrder { expected: 2 }, "only the last reply is kept");
        assert_eq!(x.check(1), Verdict::Repeat(second));
        assert_eq!(x.check(2), Verdict::Fresh);
    }

    #[test]
    fn a_session_may_start_at_one_and_its_end_is_the_closed_byte() {
        let mut x = Exchange::default();
        assert_eq!(x.check(1), Verdict::Fresh);
        assert_eq!(&x.answer(1, false, b"tail", true)[..], b"\x01tail", "the last data first");
        assert_eq!(&x.answer(2, false, b"", true)[..], b"\x00");
    }
}
