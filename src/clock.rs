//! The server's clock. Every part of the server that needs the time asks a
//! [`Clock`]; the system clock in service, a manual one in tests, which
//! then decide when deadlines pass and tokens expire without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::Time;

/// The time source. Cloning shares it: a manual clock moved through one
/// clone has moved for every holder.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. Else microseconds since the epoch.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `at` until moved ([`Clock::advance`],
    /// [`Clock::set`]).
    pub fn manual(at: Time) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(at.0))),
        }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        match &self.manual {
            Some(t) => Time(t.load(Ordering::SeqCst)),
            None => system_now(),
        }
    }

    /// Moves a manual clock `secs` seconds forward; the system clock
    /// cannot be moved, and this does nothing to it.
    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.manual {
            let _ = t.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |us| {
                Some(Time(us).plus_secs(secs).0)
            });
        }
    }

    /// Sets a manual clock to `at` (does nothing to the system clock).
    pub fn set(&self, at: Time) {
        if let Some(t) = &self.manual {
            t.store(at.0, Ordering::SeqCst);
        }
    }
}

fn system_now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_for_every_clone() {
        let c = Clock::manual(Time(1_000_000));
        let other = c.clone();
        assert_eq!(c.now(), Time(1_000_000));
        c.advance(90);
        assert_eq!(other.now(), Time(91_000_000));
        other.set(Time(5));
        assert_eq!(c.now(), Time(5));
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock_and_ignores_moves() {
        let c = Clock::system();
        let before = c.now();
        c.advance(3_600);
        let after = c.now();
        assert!(before <= after && after < before.plus_secs(60));
    }
}
