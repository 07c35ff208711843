//! When to try again: backoff, probing a server that looks down, when a collection's
//! loop next looks for work, and the jitter that keeps a fleet from moving in step.
//! Pure functions, as the rest of [`super`].

use std::time::Duration;

use super::RETRY_BASE;
use crate::store::Millis;

/// Capped exponential backoff with full jitter: a uniform wait in
/// `[0, min(cap, base·2^(attempt-1))]`. `random` is uniform in `[0, 1)`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, random: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(cap).mul_f64(random.clamp(0.0, 1.0))
}

/// How long a collection whose server looks down waits before its next probe: half
/// fixed, half jitter, so probes never come in a burst. `failures` counts from 1.
pub fn probe_delay(failures: u32, random: f64) -> Duration {
    let window = RETRY_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(Duration::from_secs(60));
    window / 2 + (window / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// A collection's server, as its loop sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    /// No answer lately: wait until `until`, then probe with one request.
    Down {
        failures: u32,
        until: Millis,
    },
}

/// What a batch's answers say of the server: `sent` requests finished, `unhealthy` of
/// them without an answer that shows it up (no answer, 5xx, 429 …), the longest
/// `Retry-After` among them. Any good answer means it is up; a batch of nothing but
/// bad ones means it is down, and the next probe waits longer each time (at least
/// as long as the server asked).
pub fn health_after(
    health: Health,
    sent: usize,
    unhealthy: usize,
    retry_after: Option<Duration>,
    now: Millis,
    random: f64,
) -> Health {
    if sent > unhealthy {
        return Health::Up;
    }
    if unhealthy == 0 {
        return health;
    }
    let failures = match health {
        Health::Down { failures, .. } => failures + 1,
        Health::Up => 1,
    };
    let pause = probe_delay(failures, random).max(retry_after.unwrap_or_default());
    Health::Down {
        failures,
        until: now + pause.as_millis() as Millis,
    }
}

/// When a collection's loop next looks for work, at the earliest of: the next full
/// scan, a retry falling due (or the store's own next step), a change held back, the
/// next periodic pass. A server that is down is probed when its pause ends, and not
/// before: records may be waiting that no row or notice would wake the loop for
/// (written during the pause, or their rows forgotten by `reset-tracking`).
pub fn next_wake(
    next_full_scan: Millis,
    retry_at: Option<Millis>,
    deferred: Option<Millis>,
    next_pass: Option<Millis>,
    health: Health,
) -> Millis {
    let mut wake = next_full_scan;
    for candidate in [retry_at, deferred, next_pass].into_iter().flatten() {
        wake = wake.min(candidate);
    }
    if let Health::Down { until, .. } = health {
        wake = until;
    }
    wake
}

/// A small, fast pseudo-random source for jitter (xorshift64*), seeded per process.
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    pub fn from_clock() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}
