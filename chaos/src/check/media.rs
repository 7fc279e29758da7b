//! Media continuity as the RTMP clients saw it: frames lost (sequence gaps after
//! dropping duplicates, and frames the publisher sent that never arrived), the longest
//! stall between two new frames, and disconnects.

use crate::history::{MediaEvent, MediaTrace};

/// One player's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlayerVerdict {
    pub frames: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub max_stall_ms: u64,
    pub disconnects: u64,
    /// `(after seq, missing count)` for each gap.
    pub gaps: Vec<(u64, u64)>,
}

/// Checks one player's trace against the last sequence the publisher sent (`None`: no
/// tail check).
pub fn check_player(trace: &MediaTrace, last_sent: Option<u64>) -> PlayerVerdict {
    let mut v = PlayerVerdict::default();
    let mut last: Option<(u64, u64)> = None; // (seq, t_us) of the newest frame
    for e in &trace.events {
        match e {
            MediaEvent::Frame { t_us, seq } => match last {
                Some((prev, _)) if *seq <= prev => v.duplicates += 1,
                Some((prev, prev_t)) => {
                    if *seq > prev + 1 {
                        v.lost += seq - prev - 1;
                        v.gaps.push((prev, seq - prev - 1));
                    }
                    v.max_stall_ms = v.max_stall_ms.max(t_us.saturating_sub(prev_t) / 1_000);
                    v.frames += 1;
                    last = Some((*seq, *t_us));
                }
                None => {
                    v.frames += 1;
                    last = Some((*seq, *t_us));
                }
            },
            MediaEvent::Disconnect { .. } => v.disconnects += 1,
        }
    }
    if let (Some(sent), Some((seen, _))) = (last_sent, last) {
        if sent > seen {
            v.lost += sent - seen;
            v.gaps.push((seen, sent - seen));
        }
    }
    if last.is_none() {
        if let Some(sent) = last_sent {
            // Nothing arrived at all: everything the publisher sent is lost.
            v.lost += sent + 1;
        }
    }
    v
}

/// Disconnects in a publisher's trace.
pub fn disconnects(trace: &MediaTrace) -> u64 {
    trace.events.iter().filter(|e| matches!(e, MediaEvent::Disconnect { .. })).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(events: Vec<MediaEvent>) -> MediaTrace {
        MediaTrace { client: "p".into(), events }
    }

    fn f(t_ms: u64, seq: u64) -> MediaEvent {
        MediaEvent::Frame { t_us: t_ms * 1_000, seq }
    }

    #[test]
    fn a_continuous_stream_with_duplicates_after_failover_passes() {
        let v =
            check_player(&trace(vec![f(0, 10), f(40, 11), f(80, 12), f(900, 11), f(910, 12), f(920, 13)]), Some(13));
        assert_eq!((v.lost, v.duplicates, v.disconnects), (0, 2, 0));
        assert_eq!(v.max_stall_ms, 840);
    }

    #[test]
    fn a_media_gap_is_flagged() {
        let v = check_player(&trace(vec![f(0, 10), f(40, 11), f(500, 15), f(540, 16)]), Some(16));
        assert_eq!(v.lost, 3);
        assert_eq!(v.gaps, vec![(11, 3)]);
    }

    #[test]
    fn frames_that_never_arrived_are_lost() {
        let v = check_player(&trace(vec![f(0, 10), f(40, 11)]), Some(20));
        assert_eq!(v.lost, 9);
        let v = check_player(&trace(vec![]), Some(4));
        assert_eq!(v.lost, 5);
    }

    #[test]
    fn a_disconnect_is_flagged() {
        let t = trace(vec![f(0, 1), MediaEvent::Disconnect { t_us: 5, why: "closed".into() }, f(3000, 2)]);
        assert_eq!(check_player(&t, Some(2)).disconnects, 1);
        assert_eq!(disconnects(&t), 1);
    }
}
