//! Adaptive concurrency (`remote.concurrency = "adaptive"`): how many requests may be
//! in flight, found as answers come, as Vector's ARC does — additive increase while
//! the link keeps up, multiplicative decrease when it slows down or the server pushes
//! back. Pure: it is told each answer's round-trip time and what the answer was, and
//! says the limit; the engine sizes its permits to it.

/// A window whose round trips are this much longer than the link's unloaded round
/// trip (the lowest seen lately) says requests are queueing: the link or the server is
/// saturated.
const SLOWDOWN: f64 = 1.25;
/// The lowest round trip is forgotten after this many windows (a few minutes at a
/// WAN's round trip), so a route that got slower for good becomes the new baseline.
const BASELINE_WINDOWS: u32 = 2_000;
/// How much the limit is cut on a slowdown or a push back.
const DECREASE: f64 = 0.9;
/// The weight of a new window in the moving averages.
const ALPHA: f64 = 0.4;

#[derive(Clone, Debug)]
pub struct Adaptive {
    limit: f64,
    max: f64,
    /// The moving mean of windows' round-trip times (ms): a window lasts about one.
    mean: Option<f64>,
    /// The link's round trip when nothing queues: the lowest window lately (ms).
    baseline: Option<f64>,
    window: Window,
    /// When the last window closed (ms).
    closed_at: Option<i64>,
    /// Windows since the baseline was last forgotten.
    windows: u32,
}

/// Answers since the limit was last adjusted (about one round trip).
#[derive(Clone, Debug, Default)]
struct Window {
    answers: u32,
    rtt_sum: f64,
    /// The most requests in flight seen in the window: was the limit used?
    most_in_flight: usize,
    pushed_back: bool,
}

impl Adaptive {
    /// Starts at one request in flight; never more than `max`.
    pub fn new(max: usize) -> Adaptive {
        Adaptive {
            limit: 1.0,
            max: max.max(1) as f64,
            mean: None,
            baseline: None,
            window: Window::default(),
            closed_at: None,
            windows: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// One answer: its round trip (ms), whether the server pushed back (429, 503, no
    /// answer in time), and how many requests were in flight. Returns the limit.
    pub fn observe(&mut self, now: i64, rtt: f64, pushed_back: bool, in_flight: usize) -> usize {
        let opened_at = *self.closed_at.get_or_insert(now - rtt as i64);
        self.window.answers += 1;
        self.window.rtt_sum += rtt;
        self.window.most_in_flight = self.window.most_in_flight.max(in_flight);
        self.window.pushed_back |= pushed_back;
        // A window lasts about one round trip.
        let span = self.mean.unwrap_or(rtt);
        if ((now - opened_at) as f64) < span && !pushed_back {
            return self.limit();
        }
        self.closed_at = Some(now);
        let window = std::mem::take(&mut self.window);
        let current = window.rtt_sum / f64::from(window.answers);
        let slower = self
            .baseline
            .is_some_and(|baseline| current > baseline * SLOWDOWN);
        if window.pushed_back || slower {
            self.limit = (self.limit * DECREASE).max(1.0);
        } else if window.most_in_flight >= self.limit as usize {
            self.limit = (self.limit + 1.0).min(self.max);
        }
        self.windows += 1;
        if self.windows >= BASELINE_WINDOWS {
            self.windows = 0;
            self.baseline = None;
        }
        self.baseline = Some(self.baseline.map_or(current, |b| b.min(current)));
        self.mean = Some(match self.mean {
            Some(mean) => (1.0 - ALPHA) * mean + ALPHA * current,
            None => current,
        });
        self.limit()
    }
}

/// The engine's permits, sized to an [`Adaptive`] limit as answers come.
pub struct Concurrency {
    adaptive: std::sync::Mutex<Adaptive>,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// How many permits the semaphore was last sized to.
    capacity: std::sync::atomic::AtomicUsize,
}

impl Concurrency {
    /// Starts at one request in flight, up to `max`; `permits` must start with one.
    pub fn new(max: usize, permits: std::sync::Arc<tokio::sync::Semaphore>) -> Concurrency {
        Concurrency {
            adaptive: std::sync::Mutex::new(Adaptive::new(max)),
            permits,
            capacity: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// One answer (its round trip, and whether the server pushed back): the permits
    /// follow the new limit.
    pub fn observe(&self, rtt: std::time::Duration, pushed_back: bool) {
        use std::sync::atomic::Ordering;
        let capacity = self.capacity.load(Ordering::Relaxed);
        let in_flight = capacity.saturating_sub(self.permits.available_permits()) + 1;
        let Ok(mut adaptive) = self.adaptive.lock() else {
            return;
        };
        let now = crate::store::now_ms();
        let limit = adaptive.observe(now, rtt.as_secs_f64() * 1000.0, pushed_back, in_flight);
        if limit > capacity {
            self.permits.add_permits(limit - capacity);
            self.capacity.store(limit, Ordering::Relaxed);
        } else if limit < capacity {
            // Only free permits can be taken back; the rest on later answers.
            let taken = self.permits.forget_permits(capacity - limit);
            self.capacity.store(capacity - taken, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose round trip is `base` ms up to `capacity` requests in flight and
    /// grows with the queue beyond it.
    fn drive(adaptive: &mut Adaptive, base: f64, capacity: usize, rounds: usize) -> usize {
        let mut now = 0i64;
        for _ in 0..rounds {
            let in_flight = adaptive.limit();
            let queue = in_flight.saturating_sub(capacity) as f64;
            let rtt = base * (1.0 + queue / capacity as f64);
            now += rtt as i64;
            for _ in 0..in_flight {
                adaptive.observe(now, rtt, false, in_flight);
            }
        }
        adaptive.limit()
    }

    #[test]
    fn the_limit_grows_to_what_the_link_carries_and_no_further() {
        let mut adaptive = Adaptive::new(64);
        let limit = drive(&mut adaptive, 50.0, 12, 200);
        assert!((10..=16).contains(&limit), "{limit}");
        // A faster link lets it grow to the cap.
        let mut adaptive = Adaptive::new(16);
        assert_eq!(drive(&mut adaptive, 50.0, 100, 100), 16);
    }

    #[test]
    fn push_back_cuts_the_limit_and_it_never_goes_below_one() {
        let mut adaptive = Adaptive::new(32);
        drive(&mut adaptive, 50.0, 100, 40);
        let before = adaptive.limit();
        let after = adaptive.observe(10_000, 50.0, true, before);
        assert!(after < before, "{before} → {after}");
        for i in 0..100 {
            adaptive.observe(20_000 + i * 100, 50.0, true, 1);
        }
        assert_eq!(adaptive.limit(), 1);
    }
}
