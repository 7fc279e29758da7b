//! Control messages of the link, encoded with bincode (see `frame`). This is a
//! versioned boundary: append variants at the end, never reorder or change them, and
//! bump [`PROTOCOL_VERSION`] when that rule cannot hold.

use raftcast_raft::{NodeId, StreamKey};
use serde::{Deserialize, Serialize};

use crate::hls::mark::Continuation;

/// Version spoken on the link; the origin refuses a `Hello` with another one.
///
/// 4: the HLS window on demand (`HlsInterest`, `RetainWindow`): an origin tells a
/// publishing edge whether to keep the window for a new owner, and only a protocol-4
/// edge, which says which of its subscriptions feed HLS, is told.
/// 3: the claims feed (`WatchClaims`, `Claims`, `UnwatchClaims`).
/// 2: `PublishRefused` carries a [`PublishRefusal`] instead of text. `Hello`, `Welcome`
/// and `Refused` (the first three variants) never change: they are how two versions
/// find out they differ.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest version an origin still accepts at `Hello`, answering `Welcome` with the
/// edge's version: what protocol 3 added is asked for by the edge, so a protocol-2 edge
/// (which follows claims with `Forward::WatchStream`) works unchanged on a protocol-3
/// origin; what protocol 4 added is sent to protocol-4 edges only, and the
/// subscriptions of older ones all count as feeding HLS. Origins upgrade first; an edge
/// newer than its origin is refused.
pub const OLDEST_PROTOCOL: u32 = 2;

/// Why an origin refused a publish. The edge decides what to do on this, never on
/// the text, which is for logs and clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PublishRefusal {
    /// The origin restarted and has not confirmed its state with the cluster yet.
    #[error("this origin has not confirmed its state with the cluster since it started; retry")]
    NotConfirmed,
    /// Too many publishes on this link already wait for their claims to apply.
    #[error("{0} publishes already wait for their claims; retry")]
    Busy(u32),
    /// The applied state has no claim for the stream.
    #[error("the stream has no claim")]
    NoClaim,
    /// The publish names an epoch that is not the stream's current one.
    #[error("stale epoch {epoch}; the current epoch is {current}")]
    StaleEpoch { epoch: u64, current: u64 },
    /// Another origin owns the stream.
    #[error("origin {owner} owns this stream")]
    NotOwner { owner: NodeId },
    /// A newer epoch publishes the stream here, or its claim was released: the
    /// publisher learns that its claim moved on.
    #[error("fenced: a newer epoch publishes this stream, or its claim was released")]
    Fenced,
}

impl PublishRefusal {
    /// Whether the same publish may succeed if sent again (the claim is still the
    /// edge's; the origin is not ready for it yet). Otherwise the claim is not the
    /// edge's any more.
    pub(crate) fn retryable(self) -> bool {
        matches!(self, PublishRefusal::NotConfirmed | PublishRefusal::Busy(_))
    }
}

/// Names one stream's media on one link, assigned by the edge when it publishes or
/// subscribes, so media frames need not repeat the stream's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelId(pub u32);

/// A control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// The edge's first frame: who it is, authenticated by the cluster secret.
    Hello {
        protocol: u32,
        edge: String,
        secret: String,
    },
    /// The origin accepted the link.
    Welcome {
        protocol: u32,
        origin: NodeId,
    },
    /// The origin refused the link (wrong secret or version); it closes next.
    Refused {
        reason: String,
    },
    /// Liveness, both ways; answered with `Pong` carrying the same sequence number.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Edge → origin: media for `stream` follows on `channel`, under claim `epoch`.
    Publish {
        channel: ChannelId,
        stream: StreamKey,
        epoch: u64,
    },
    /// Origin → edge: the publish is accepted (the epoch is current).
    PublishAccepted {
        channel: ChannelId,
    },
    /// Origin → edge: the publish is refused, or a publish it had accepted is over
    /// (`Fenced`).
    PublishRefused {
        channel: ChannelId,
        reason: PublishRefusal,
    },
    /// Edge → origin: the publisher stopped.
    Unpublish {
        channel: ChannelId,
    },
    /// Edge → origin: send `stream`'s media on `channel`, starting from the GOP cache.
    Subscribe {
        channel: ChannelId,
        stream: StreamKey,
    },
    /// Origin → edge: the subscription is live.
    Subscribed {
        channel: ChannelId,
    },
    /// Origin → edge: this origin has no such stream.
    NotFound {
        channel: ChannelId,
    },
    /// Edge → origin: stop sending `channel`.
    Unsubscribe {
        channel: ChannelId,
    },
    /// Origin → edge: the stream on `channel` ended.
    Ended {
        channel: ChannelId,
    },
    /// Edge → origin: like `Subscribe`, for an edge that already has the stream up to
    /// these publisher timestamps (it followed the stream here from another owner):
    /// start right after them if the origin's history reaches back that far, else at
    /// the GOP like `Subscribe`.
    SubscribeAfter {
        channel: ChannelId,
        stream: StreamKey,
        audio_ts: Option<u32>,
        video_ts: Option<u32>,
    },
    /// Origin → edge: the publish is accepted, and the stream's HLS numbering must
    /// continue after `continue_after` (the last mark this origin forwarded of an
    /// earlier session: a takeover, or a publisher back through another edge). Sent
    /// instead of `PublishAccepted` when the origin remembers one.
    PublishAcceptedAt {
        channel: ChannelId,
        continue_after: Option<Continuation>,
    },
    /// Edge → origin: like `Subscribe`, for an edge starting the stream (its HLS
    /// needs the window): the frames of the origin's HLS window that precede the live
    /// start come first, then `WindowEnd`, then the stream from the GOP as for
    /// `Subscribe`.
    SubscribeWindow {
        channel: ChannelId,
        stream: StreamKey,
    },
    /// Origin → edge: the window's frames on `channel` are over; what follows is live.
    WindowEnd {
        channel: ChannelId,
    },
    /// Edge → origin: send `stream`'s HLS window on `channel` (a channel of its own,
    /// not a subscription): every frame of the window as the origin holds it now (the
    /// headers in effect at its start, then from the oldest segment start to the
    /// newest frame), then `WindowEnd`; `NotFound` if this origin has no such stream.
    /// Nothing live follows. An edge whose relay was subscribed without the window
    /// (its players play RTMP or HTTP-FLV only) asks for it when HLS starts there, and
    /// joins it to the live frames its relay already has.
    FetchWindow {
        channel: ChannelId,
        stream: StreamKey,
    },
    /// Edge → origin: the claims feed of this link, on `channel` (one per link; a
    /// `WatchClaims` on another channel starts the feed afresh with nothing watched).
    /// Stop following `remove`, start following `add`: the origin answers each added
    /// stream's current claim with `Claims`, then every change of a followed stream's
    /// claim, as it applies them. Nothing is sent before the origin's applied state
    /// reaches log index `at_least` (what the edge already saw from another origin), so
    /// a claim the edge follows never goes back. At most [`MAX_FEED_BATCH`] names each.
    WatchClaims {
        channel: ChannelId,
        add: Vec<StreamKey>,
        remove: Vec<StreamKey>,
        at_least: u64,
    },
    /// Origin → edge: claims of followed streams as of applied log index `applied`
    /// (`None`: not claimed), with the owners' media addresses. `seq` counts the
    /// feed's messages from 0: a gap means the edge lost one and starts afresh.
    Claims {
        channel: ChannelId,
        seq: u64,
        applied: u64,
        claims: Vec<(StreamKey, Option<FeedClaim>)>,
    },
    /// Edge → origin: the feed on `channel` is abandoned (the edge moved it to another
    /// origin while this link stayed up): stop following and sending.
    UnwatchClaims {
        channel: ChannelId,
    },
    /// Edge → origin (protocol 4): whether the subscription on `channel` feeds an HLS
    /// packager on the edge. A `SubscribeWindow` subscription starts as one, every
    /// other as not; a protocol-2 or 3 edge never says, so all its subscriptions count.
    HlsInterest {
        channel: ChannelId,
        packaging: bool,
    },
    /// Origin → edge (protocol 4), on a publish channel: whether to keep the HLS
    /// window's frames for a new owner (`media::retain`). Kept while some edge packages
    /// the stream as HLS or the stream is recorded; sent at acceptance and when that
    /// changes. A publishing edge keeps the window until it is told otherwise.
    RetainWindow {
        channel: ChannelId,
        keep: bool,
    },
}

/// Most streams named in one `WatchClaims` or answered in one `Claims`: with names of
/// at most 128 bytes a message stays well inside [`crate::link::frame::MAX_CONTROL`].
pub(crate) const MAX_FEED_BATCH: usize = 64;

/// A stream's claim in the claims feed, and where its owner takes media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedClaim {
    pub claim: raftcast_raft::command::StreamClaim,
    /// The owner's media address (`None`: not in the membership this origin knows).
    pub media: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_origin_not_ready_yet_asks_for_a_retry() {
        use PublishRefusal::*;
        for r in [NotConfirmed, Busy(8)] {
            assert!(r.retryable(), "{r}");
        }
        for r in [NoClaim, StaleEpoch { epoch: 1, current: 2 }, NotOwner { owner: 3 }, Fenced] {
            assert!(!r.retryable(), "{r}");
        }
        // The text is for people; it still says what happened.
        assert_eq!(StaleEpoch { epoch: 1, current: 2 }.to_string(), "stale epoch 1; the current epoch is 2");
    }

    #[test]
    fn the_messages_that_negotiate_versions_keep_their_place() {
        // `Hello`, `Welcome` and `Refused` are variants 0, 1 and 2 in every version: an
        // edge and an origin of different versions must still decode them.
        use raftcast_raft::rpc::encode;
        let starts_with_variant = |c: &Control, index: u32| encode(c).starts_with(&encode(&index));
        let hello = Control::Hello { protocol: 1, edge: "e".into(), secret: "s".into() };
        assert!(starts_with_variant(&hello, 0));
        assert!(starts_with_variant(&Control::Welcome { protocol: 1, origin: 1 }, 1));
        assert!(starts_with_variant(&Control::Refused { reason: "r".into() }, 2));
    }
}
