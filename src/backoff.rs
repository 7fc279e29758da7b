//! The one retry pause of the code base: doubling from a first pause up to a ceiling,
//! reset after a success. Used by the origin's proposer (retries while no leader is
//! known), the edge's link to each origin (reconnects), the edge's publisher
//! relocation (looking for a stream's new owner) and its relays (subscriptions an owner
//! refused).

use std::time::Duration;

/// A doubling pause between retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles up to `max` (`max` is raised to `first` if lower).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max: max.max(first), next: first }
    }

    /// The pause to take now; the one after it is twice as long, up to the ceiling.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// The pause [`Backoff::next_pause`] would return, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(20), ms(250));
        let pauses: Vec<_> = (0..6).map(|_| b.next_pause()).collect();
        assert_eq!(pauses, [ms(20), ms(40), ms(80), ms(160), ms(250), ms(250)]);
        assert_eq!(b.peek(), ms(250));
        b.reset();
        assert_eq!(b.next_pause(), ms(20));
        // A ceiling below the first pause holds at the first.
        let mut low = Backoff::new(ms(100), ms(10));
        assert_eq!((low.next_pause(), low.next_pause()), (ms(100), ms(100)));
    }
}
