//! The RTMP VOD player (`docs/vod.md`, "Edges: RTMP"): which frames of a VOD file go
//! to one RTMP play and when, as a state machine with no sockets, no file and no clock
//! of its own (the caller passes `now`), tested in simulated time.
//!
//! A play starts at the keyframe at or before the position asked for
//! ([`VodIndex::start_for`]), after `onMetaData` (the duration) and the sequence
//! headers. Frames are paced by their timestamps: each is due `lead` before its time
//! comes in real time, counted from where the play (or the last seek or unpause)
//! started, so a client gets its buffer's worth at once and then the stream in real
//! time. `lead` is the client's buffer length (`SetBufferLength`), within
//! [`MIN_LEAD`]..=[`MAX_LEAD`]. When the lead is used up the player says so once
//! ([`Note::BufferEmpty`], as Flash Media Server does: librtmp then pauses and resumes
//! to have the next buffer at once). Pause stops the pacing and keeps the position;
//! a seek moves it (paused or not); unpausing restarts the pacing from the position.
//! At the end: [`Note::Complete`], then nothing until a seek.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hls::VodIndex;

/// The least lead: what a client with a tiny buffer (Flash's default is 0.1 s) still
/// gets ahead of real time.
pub(crate) const MIN_LEAD: Duration = Duration::from_secs(1);
/// The most lead: how far ahead of real time a client with a huge buffer (rtmpdump
/// asks for 10 hours) is sent at once. The socket bounds what one play holds in
/// memory; this bounds how fast one client takes a file when it reads as fast as it
/// can (a lead's worth, then real time, unless it pauses and resumes).
pub(crate) const MAX_LEAD: Duration = Duration::from_secs(10);
/// The lead before the client says its buffer length (ffmpeg asks for 3 s).
pub(crate) const DEFAULT_LEAD: Duration = Duration::from_secs(3);
/// Most frames in one batch.
pub(crate) const MAX_BATCH_FRAMES: usize = 64;
/// Most bytes of frame bodies in one batch (one frame larger than this goes alone).
pub(crate) const MAX_BATCH_BYTES: u64 = 512 << 10;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Control {
    /// `seek` to a position, ms.
    Seek(u64),
    /// `pause` (true) or resume (false).
    Pause(bool),
    /// Its buffer length.
    Buffer(Duration),
}

/// What the client is told (the driver sends it through the session).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Note {
    /// `onMetaData` with the duration (first thing of a play).
    Metadata,
    /// `NetStream.Seek.Notify` (the play now stands at this position, ms).
    Seeked(u64),
    /// `NetStream.Pause.Notify` (true) or `Unpause.Notify` (false), at this position.
    Paused(bool, u64),
    /// `NetStream.Play.Complete` and `Play.Stop`: every frame was sent.
    Complete,
    /// User Control `BufferEmpty`: a lead's worth was sent ahead; now real time.
    BufferEmpty,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Note(Note),
    /// Send the sequence headers, stamped with the current position.
    Headers(u32),
    /// Read and send these frames ([`VodIndex::frames`]), then call
    /// [`Player::sent`]; unless a control came meanwhile (apply it and drop them).
    Frames(Range<usize>),
    /// Nothing due before then (or a control).
    Wait(Instant),
    /// Nothing until a control (paused, or complete).
    Idle,
}

pub(crate) struct Player {
    index: Arc<VodIndex>,
    /// The next frame to send.
    next: usize,
    notes: VecDeque<Note>,
    /// The sequence headers go before the next frame (a play's start, a seek).
    headers: bool,
    /// Pacing: at this instant, frames of this time (ms) were due `lead` ahead.
    anchor: Option<(Instant, u64)>,
    lead: Duration,
    paused: bool,
    complete: bool,
    /// Frames after this time (ms) are not played: the play's start plus its length.
    stop_ms: Option<u64>,
    /// `BufferEmpty` was said since the pacing last (re)started.
    said_empty: bool,
}

impl Player {
    /// A play from `start_ms` (`None`: from the start) for `length_ms` (`None`: to the
    /// end; counted from `start_ms`, not from the keyframe the play starts on).
    pub(crate) fn new(index: Arc<VodIndex>, start_ms: Option<u64>, length_ms: Option<u64>) -> Player {
        let start_ms = start_ms.unwrap_or(0);
        let next = index.start_for(start_ms);
        Player {
            index,
            next,
            notes: VecDeque::from([Note::Metadata]),
            headers: true,
            anchor: None,
            lead: DEFAULT_LEAD,
            paused: false,
            complete: false,
            stop_ms: length_ms.map(|l| start_ms.saturating_add(l)),
            said_empty: false,
        }
    }

    pub(crate) fn index(&self) -> &Arc<VodIndex> {
        &self.index
    }

    /// Where the play stands, ms: the time of the next frame (the end after the last).
    pub(crate) fn position_ms(&self) -> u64 {
        match self.index.frames().get(self.next) {
            Some(tag) => u64::from(tag.time_ms),
            None => self.index.duration().as_millis() as u64,
        }
    }

    pub(crate) fn control(&mut self, control: Control) {
        match control {
            Control::Seek(ms) => {
                // A seek plays on to the end: the length was the first play's.
                self.stop_ms = None;
                self.next = self.index.start_for(ms);
                self.headers = true;
                self.complete = false;
                self.restart_pacing();
                self.notes.push_back(Note::Seeked(self.position_ms()));
            }
            Control::Pause(paused) => {
                self.paused = paused;
                self.restart_pacing();
                self.notes.push_back(Note::Paused(paused, self.position_ms()));
            }
            Control::Buffer(lead) => self.lead = lead.clamp(MIN_LEAD, MAX_LEAD),
        }
    }

    fn restart_pacing(&mut self) {
        self.anchor = None;
        self.said_empty = false;
    }

    /// What to do at `now`.
    pub(crate) fn step(&mut self, now: Instant) -> Step {
        if let Some(note) = self.notes.pop_front() {
            return Step::Note(note);
        }
        if self.paused {
            return Step::Idle;
        }
        let frames = self.index.frames();
        let stop = self.stop_ms.unwrap_or(u64::MAX);
        let Some(first) = frames.get(self.next).filter(|t| u64::from(t.time_ms) <= stop) else {
            if self.complete {
                return Step::Idle;
            }
            self.complete = true;
            return Step::Note(Note::Complete);
        };
        if self.headers {
            self.headers = false;
            return Step::Headers(first.time_ms);
        }
        let (since, from_ms) = *self.anchor.get_or_insert((now, u64::from(first.time_ms)));
        let horizon = from_ms + (now.saturating_duration_since(since) + self.lead).as_millis() as u64;
        if u64::from(first.time_ms) > horizon {
            if !self.said_empty {
                self.said_empty = true;
                return Step::Note(Note::BufferEmpty);
            }
            let ahead = Duration::from_millis(u64::from(first.time_ms) - from_ms);
            return Step::Wait(since + ahead.saturating_sub(self.lead));
        }
        let mut end = self.next;
        let mut bytes = 0;
        for tag in &frames[self.next..] {
            let full = end - self.next >= MAX_BATCH_FRAMES
                || (end > self.next && bytes + u64::from(tag.size) > MAX_BATCH_BYTES);
            if u64::from(tag.time_ms) > horizon.min(stop) || full {
                break;
            }
            bytes += u64::from(tag.size);
            end += 1;
        }
        Step::Frames(self.next..end)
    }

    /// The frames up to `end` were sent.
    pub(crate) fn sent(&mut self, end: usize) {
        self.next = end;
    }
}

#[cfg(test)]
mod tests {
    use super::super::hls::tests::{flv, synthetic, temp_file};
    use super::*;

    /// An index of `seconds` of the synthetic stream at 25 fps, a keyframe every 1.2 s.
    fn index(seconds: u64) -> Arc<VodIndex> {
        let (file, len) = temp_file(&flv(&synthetic(seconds, 25, 30)));
        Arc::new(VodIndex::build(&file, len, Duration::from_secs(2)).unwrap())
    }

    /// Runs the player in simulated time until it is idle or `until` passes, applying
    /// `controls` at their times; every step, with the time it was taken at.
    fn run(
        player: &mut Player,
        start: Instant,
        until: Duration,
        controls: &[(Duration, Control)],
    ) -> Vec<(Duration, Step)> {
        let mut now = start;
        let mut steps = Vec::new();
        let mut controls: VecDeque<_> = controls.iter().copied().collect();
        loop {
            while controls.front().is_some_and(|(at, _)| start + *at <= now) {
                player.control(controls.pop_front().unwrap().1);
            }
            let step = player.step(now);
            steps.push((now - start, step.clone()));
            match step {
                Step::Frames(range) => player.sent(range.end),
                Step::Wait(t) => {
                    assert!(t > now, "a wait is in the future");
                    now = controls.front().map_or(t, |(at, _)| t.min(start + *at));
                }
                Step::Idle => match controls.front() {
                    Some((at, _)) => now = now.max(start + *at),
                    None => return steps,
                },
                Step::Note(_) | Step::Headers(_) => {}
            }
            if now - start > until {
                return steps;
            }
        }
    }

    /// The frames sent, in order, with when each was sent.
    fn sent(steps: &[(Duration, Step)]) -> Vec<(Duration, usize)> {
        steps
            .iter()
            .filter_map(|(at, s)| if let Step::Frames(r) = s { Some(r.clone().map(move |i| (*at, i))) } else { None })
            .flatten()
            .collect()
    }

    fn notes(steps: &[(Duration, Step)]) -> Vec<Note> {
        steps.iter().filter_map(|(_, s)| if let Step::Note(n) = s { Some(*n) } else { None }).collect()
    }

    #[test]
    fn a_play_sends_metadata_headers_then_every_frame_once_paced_a_lead_ahead() {
        let index = index(10);
        let mut player = Player::new(index.clone(), None, None);
        let steps = run(&mut player, Instant::now(), Duration::from_secs(60), &[]);
        assert_eq!(steps[0].1, Step::Note(Note::Metadata));
        assert_eq!(steps[1].1, Step::Headers(0));
        let frames = sent(&steps);
        let order: Vec<usize> = frames.iter().map(|(_, i)| *i).collect();
        assert_eq!(order, (0..index.frames().len()).collect::<Vec<_>>(), "every frame once, in order");
        for (at, i) in &frames {
            let due = Duration::from_millis(u64::from(index.frames()[*i].time_ms)).saturating_sub(DEFAULT_LEAD);
            assert!(*at <= due + Duration::from_millis(1), "frame {i} sent at {at:?}, due at {due:?}");
            assert!(*at + Duration::from_millis(1) >= due, "frame {i} sent at {at:?}, before {due:?}");
        }
        assert_eq!(notes(&steps), [Note::Metadata, Note::BufferEmpty, Note::Complete]);
        assert_eq!(steps.last().unwrap().1, Step::Idle, "nothing after the end");
        for (_, s) in &steps {
            if let Step::Frames(r) = s {
                assert!(r.len() <= MAX_BATCH_FRAMES);
            }
        }
    }

    #[test]
    fn the_clients_buffer_sets_the_lead_within_bounds() {
        for (asked, lead) in [(100, MIN_LEAD), (5_000, Duration::from_secs(5)), (36_000_000, MAX_LEAD)] {
            let index = index(30);
            let mut player = Player::new(index.clone(), None, None);
            player.control(Control::Buffer(Duration::from_millis(asked)));
            let steps = run(&mut player, Instant::now(), Duration::from_millis(1), &[]);
            let at_once = sent(&steps).iter().filter(|(at, _)| at.is_zero()).count();
            let within = index.frames().iter().filter(|t| u64::from(t.time_ms) <= lead.as_millis() as u64).count();
            assert_eq!(at_once, within, "a buffer of {asked} ms gets a lead of {lead:?} at once");
        }
    }

    #[test]
    fn a_start_position_or_a_seek_lands_on_the_keyframe_before_it() {
        let index = index(10);
        let mut player = Player::new(index.clone(), Some(5_000), None);
        let steps = run(&mut player, Instant::now(), Duration::from_secs(60), &[]);
        assert_eq!(steps[1].1, Step::Headers(4800), "the keyframe at 4.8 s, within one GOP of 5 s");
        let first = sent(&steps)[0].1;
        assert!(index.frames()[first].is_keyframe() && index.frames()[first].time_ms == 4800);

        // Seek back while playing: notified, headers again, frames from the keyframe.
        let mut player = Player::new(index.clone(), None, None);
        let steps = run(
            &mut player,
            Instant::now(),
            Duration::from_secs(60),
            &[(Duration::from_secs(4), Control::Seek(2_500))],
        );
        let seek = steps.iter().position(|(_, s)| *s == Step::Note(Note::Seeked(2400))).expect("Seek.Notify");
        assert_eq!(steps[seek + 1].1, Step::Headers(2400));
        let after: Vec<usize> = sent(&steps[seek..]).iter().map(|(_, i)| *i).collect();
        assert_eq!(after[0], index.start_for(2_500));
        assert_eq!(*after.last().unwrap(), index.frames().len() - 1, "and on to the end");
        assert_eq!(notes(&steps).last(), Some(&Note::Complete));
    }

    #[test]
    fn pause_keeps_the_position_and_resume_goes_on_without_a_gap_or_a_repeat() {
        let index = index(10);
        let mut player = Player::new(index.clone(), None, None);
        let controls =
            [(Duration::from_secs(2), Control::Pause(true)), (Duration::from_secs(30), Control::Pause(false))];
        let steps = run(&mut player, Instant::now(), Duration::from_secs(120), &controls);
        let frames = sent(&steps);
        let order: Vec<usize> = frames.iter().map(|(_, i)| *i).collect();
        assert_eq!(order, (0..index.frames().len()).collect::<Vec<_>>(), "every frame once, in order");
        let paused_at = Duration::from_secs(2);
        let resumed_at = Duration::from_secs(30);
        assert!(frames.iter().all(|(at, _)| *at <= paused_at || *at >= resumed_at), "nothing sent while paused");
        let said = notes(&steps);
        let position = |paused| {
            said.iter().find_map(|n| match n {
                Note::Paused(p, at) if *p == paused => Some(*at),
                _ => None,
            })
        };
        let (p, u) = (position(true).unwrap(), position(false).unwrap());
        assert_eq!(p, u, "resumed where it paused");
        // The pacing restarts at the resume: a lead's worth at once.
        let burst = frames.iter().filter(|(at, _)| *at == resumed_at).count();
        let lead = index
            .frames()
            .iter()
            .filter(|t| (p..=p + DEFAULT_LEAD.as_millis() as u64).contains(&u64::from(t.time_ms)))
            .count();
        assert!(burst >= lead - 1, "{burst} frames at the resume, {lead} in a lead");
        // A seek while paused moves the position and stays paused.
        let mut player = Player::new(index.clone(), None, None);
        let controls = [(Duration::from_secs(1), Control::Pause(true)), (Duration::from_secs(2), Control::Seek(7_300))];
        let steps = run(&mut player, Instant::now(), Duration::from_secs(20), &controls);
        assert_eq!(notes(&steps).last(), Some(&Note::Seeked(7200)));
        assert!(sent(&steps).iter().all(|(at, _)| at.as_secs() < 1), "still paused");
        assert_eq!(player.position_ms(), 7200);
    }

    #[test]
    fn a_length_ends_the_play_early() {
        let index = index(10);
        let mut player = Player::new(index.clone(), Some(5_000), Some(2_000));
        let steps = run(&mut player, Instant::now(), Duration::from_secs(60), &[]);
        let frames = sent(&steps);
        let times: Vec<u32> = frames.iter().map(|(_, i)| index.frames()[*i].time_ms).collect();
        assert_eq!(times.first(), Some(&4800));
        assert!(*times.iter().max().unwrap() <= 7000 && *times.iter().max().unwrap() > 6900, "to 7 s: {times:?}");
        assert_eq!(notes(&steps).last(), Some(&Note::Complete));
    }

    #[test]
    fn after_the_end_a_seek_plays_again() {
        let index = index(4);
        let mut player = Player::new(index.clone(), None, None);
        let controls = [(Duration::from_secs(20), Control::Seek(0))];
        let steps = run(&mut player, Instant::now(), Duration::from_secs(60), &controls);
        assert_eq!(notes(&steps).iter().filter(|n| **n == Note::Complete).count(), 2, "complete twice");
        assert_eq!(sent(&steps).len(), 2 * index.frames().len());
    }
}
