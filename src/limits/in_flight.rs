//! Limits on how much runs at once (calls in flight, watches) that shed the excess at once
//! instead of queueing it. Each caller may hold only its share of such a limit, so that one
//! caller within its rate cannot take every place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A global limit on what runs at once (calls in flight, watches): each gets a place now or
/// is shed. A caller may hold at most `per_caller` of the places.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    permits: Arc<Semaphore>,
    max: usize,
    per_caller: usize,
    /// Places held by each caller that holds any.
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every place is taken.
    Everyone,
    /// The caller holds its whole share.
    Caller,
}

/// A place, given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    _share: Option<Share>,
}

/// A caller's claim on one of its places.
#[derive(Debug)]
struct Share {
    held: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

impl InFlight {
    /// `max` places, of which one caller may hold `per_caller`.
    pub(crate) fn new(max: usize, per_caller: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            per_caller,
            held: Arc::default(),
        }
    }

    /// A place held for the call's lifetime, or why there is none. `caller` is the
    /// authenticated caller (`None` on a gateway without callers, where no share applies).
    pub(crate) fn try_enter(&self, caller: Option<&str>) -> Result<Place, Full> {
        let share = match caller {
            Some(caller) => {
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                let count = held.entry(caller.to_string()).or_insert(0);
                if *count >= self.per_caller {
                    return Err(Full::Caller);
                }
                *count += 1;
                Some(Share {
                    held: Arc::clone(&self.held),
                    caller: caller.to_string(),
                })
            }
            None => None,
        };
        // On failure the share, dropped here, is given back.
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| Full::Everyone)?;
        Ok(Place {
            _permit: permit,
            _share: share,
        })
    }

    #[cfg(test)]
    /// Places `caller` holds now.
    pub(crate) fn held_by(&self, caller: &str) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(caller)
            .copied()
            .unwrap_or(0)
    }

    /// Permits held now.
    pub(crate) fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_sheds_beyond_the_limit_and_frees_on_drop() {
        let limit = InFlight::new(2, 2);
        let a = limit.try_enter(None).unwrap();
        let _b = limit.try_enter(None).unwrap();
        assert_eq!(limit.try_enter(None).unwrap_err(), Full::Everyone);
        assert_eq!(limit.in_use(), 2);
        drop(a);
        assert_eq!(limit.in_use(), 1);
        assert!(limit.try_enter(None).is_ok());
    }

    #[test]
    fn a_caller_holds_at_most_its_share() {
        let limit = InFlight::new(3, 2);
        let a1 = limit.try_enter(Some("a")).unwrap();
        let _a2 = limit.try_enter(Some("a")).unwrap();
        assert_eq!(limit.try_enter(Some("a")).unwrap_err(), Full::Caller);
        assert_eq!(limit.held_by("a"), 2);
        // Another caller still finds the place `a` could not take.
        let _b = limit.try_enter(Some("b")).unwrap();
        assert_eq!(limit.try_enter(Some("b")).unwrap_err(), Full::Everyone);
        // A refusal for lack of places takes nothing from the caller's share.
        assert_eq!(limit.held_by("b"), 1);
        drop(a1);
        assert_eq!(limit.held_by("a"), 1);
        assert!(limit.try_enter(Some("a")).is_ok());
    }
}
