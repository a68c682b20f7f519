//! `--limit-rate`: paces the bytes sent to peers so that a migration or a
//! snapshot does not take a board's whole uplink (issue 13).
//!
//! A token bucket that may go into debt: each read or write is let through,
//! then charged, and the caller sleeps until the debt is paid back at the
//! rate. Its burst is a tenth of a second of traffic, so the rate holds over
//! any stretch longer than that, and each read or write is capped at one burst
//! so no single call overshoots by more. One [`Pace`] may be shared by several
//! streams (replicate's peer threads): they then share the rate, as they share
//! the uplink. The clock is a trait so tests check the sleeps asked for
//! instead of timing anything.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The smallest rate accepted: below it a payload of a few MiB takes hours.
pub(crate) const MIN_RATE: u64 = 1024;

/// Where the bucket reads the time and how it waits.
pub(crate) trait Clock: Send + Sync {
    /// Time elapsed since some fixed origin.
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration);
}

/// The wall clock.
struct SystemClock(Instant);

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

struct Bucket {
    /// Bytes that may go out now; negative when in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Duration,
}

/// A rate in bytes per second, shared by every stream paced with it.
#[derive(Clone)]
pub(crate) struct Pace {
    rate: u64,
    burst: u64,
    bucket: Arc<Mutex<Bucket>>,
    clock: Arc<dyn Clock>,
}

impl Pace {
    /// Paces at `rate` bytes per second on the wall clock.
    pub(crate) fn new(rate: u64) -> Pace {
        Pace::with_clock(rate, Arc::new(SystemClock(Instant::now())))
    }

    pub(crate) fn with_clock(rate: u64, clock: Arc<dyn Clock>) -> Pace {
        let rate = rate.max(1);
        let burst = (rate / 10).max(1);
        let bucket = Bucket { tokens: burst as f64, updated: clock.now() };
        Pace { rate, burst, bucket: Arc::new(Mutex::new(bucket)), clock }
    }

    /// The most one read or write may move at once.
    fn chunk(&self, len: usize) -> usize {
        len.min(usize::try_from(self.burst).unwrap_or(usize::MAX))
    }

    /// Charges `bytes` that just went through, and sleeps off any debt.
    fn charge(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let wait = {
            // A poisoned lock only means another stream panicked mid-update:
            // the numbers in it are still usable.
            let mut bucket = self.bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = self.clock.now();
            let refill = now.saturating_sub(bucket.updated).as_secs_f64() * self.rate as f64;
            bucket.tokens = (bucket.tokens + refill).min(self.burst as f64) - bytes as f64;
            bucket.updated = now;
            if bucket.tokens < 0.0 { Duration::from_secs_f64(-bucket.tokens / self.rate as f64) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
    }
}

/// A reader or writer whose bytes go no faster than its [`Pace`].
pub(crate) struct Paced<T> {
    inner: T,
    pace: Option<Pace>,
}

impl<T> Paced<T> {
    /// `None` lets every byte through unpaced.
    pub(crate) fn new(inner: T, pace: Option<Pace>) -> Paced<T> {
        Paced { inner, pace }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(pace) = &self.pace else { return self.inner.write(buf) };
        let written = self.inner.write(&buf[..pace.chunk(buf.len())])?;
        pace.charge(written);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(pace) = &self.pace else { return self.inner.read(buf) };
        let len = pace.chunk(buf.len());
        let read = self.inner.read(&mut buf[..len])?;
        pace.charge(read);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that only moves when slept on, and remembers every sleep.
    #[derive(Default)]
    struct FakeClock {
        now: Mutex<Duration>,
        sleeps: Mutex<Vec<Duration>>,
    }

    impl FakeClock {
        fn advance(&self, by: Duration) {
            *self.now.lock().unwrap() += by;
        }

        fn sleeps(&self) -> Vec<Duration> {
            self.sleeps.lock().unwrap().clone()
        }

        fn slept(&self) -> Duration {
            self.sleeps().iter().sum()
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            *self.now.lock().unwrap()
        }

        fn sleep(&self, duration: Duration) {
            self.sleeps.lock().unwrap().push(duration);
            self.advance(duration);
        }
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(10)
    }

    #[test]
    fn writes_within_the_first_burst_do_not_wait() {
        let clock = Arc::new(FakeClock::default());
        let pace = Pace::with_clock(10_000, clock.clone());
        let mut sink = Paced::new(Vec::new(), Some(pace));
        sink.write_all(&[7; 1000]).unwrap();
        assert!(clock.sleeps().is_empty());
        assert_eq!(sink.inner.len(), 1000);
    }

    #[test]
    fn a_megabyte_at_one_megabyte_per_second_takes_a_second_less_the_burst() {
        let clock = Arc::new(FakeClock::default());
        let rate = 1 << 20;
        let mut sink = Paced::new(io::sink(), Some(Pace::with_clock(rate, clock.clone())));
        sink.write_all(&vec![0; 1 << 20]).unwrap();
        // The first tenth of a second goes out at once (the full bucket).
        assert!(close(clock.slept(), Duration::from_millis(900)), "{:?}", clock.slept());
    }

    #[test]
    fn each_write_is_capped_at_one_burst_and_sleeps_for_it() {
        let clock = Arc::new(FakeClock::default());
        let mut sink = Paced::new(io::sink(), Some(Pace::with_clock(100_000, clock.clone())));
        // A 50 kB buffer goes out as five writes of 10 kB (one burst each).
        assert_eq!(sink.write(&[0; 50_000]).unwrap(), 10_000);
        assert!(clock.sleeps().is_empty(), "the first burst is free");
        sink.write_all(&[0; 40_000]).unwrap();
        let sleeps = clock.sleeps();
        assert_eq!(sleeps.len(), 4);
        assert!(sleeps.iter().all(|s| close(*s, Duration::from_millis(100))), "{sleeps:?}");
    }

    #[test]
    fn idle_time_refills_the_bucket_only_up_to_one_burst() {
        let clock = Arc::new(FakeClock::default());
        let mut sink = Paced::new(io::sink(), Some(Pace::with_clock(100_000, clock.clone())));
        sink.write_all(&[0; 10_000]).unwrap();
        // A minute idle earns one burst, not a minute's worth.
        clock.advance(Duration::from_secs(60));
        sink.write_all(&[0; 30_000]).unwrap();
        assert!(close(clock.slept(), Duration::from_millis(200)), "{:?}", clock.sleeps());
    }

    #[test]
    fn reads_are_paced_like_writes() {
        let clock = Arc::new(FakeClock::default());
        let source = io::repeat(1).take(30_000);
        let mut paced = Paced::new(source, Some(Pace::with_clock(100_000, clock.clone())));
        let copied = io::copy(&mut paced, &mut io::sink()).unwrap();
        assert_eq!(copied, 30_000);
        assert!(close(clock.slept(), Duration::from_millis(200)), "{:?}", clock.sleeps());
    }

    #[test]
    fn streams_sharing_a_pace_share_its_rate() {
        let clock = Arc::new(FakeClock::default());
        let pace = Pace::with_clock(100_000, clock.clone());
        let mut first = Paced::new(io::sink(), Some(pace.clone()));
        let mut second = Paced::new(io::sink(), Some(pace));
        first.write_all(&[0; 20_000]).unwrap();
        second.write_all(&[0; 20_000]).unwrap();
        // 40 kB at 100 kB/s, less the one free burst: 0.3 s in all.
        assert!(close(clock.slept(), Duration::from_millis(300)), "{:?}", clock.sleeps());
    }

    #[test]
    fn without_a_pace_nothing_is_capped_or_slept() {
        let mut sink = Paced::new(Vec::new(), None);
        assert_eq!(sink.write(&[0; 1 << 20]).unwrap(), 1 << 20);
    }
}
