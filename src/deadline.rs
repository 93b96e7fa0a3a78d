//! Caller deadlines. tonic removes `grpc-timeout` from the metadata a handler sees, and its own
//! enforcement (outside every user layer) answers an expired deadline with CANCELLED. So a layer
//! reads the header as the request arrives and hands the handler a [`Deadline`], which the
//! handler enforces itself, a little early, to answer DEADLINE_EXCEEDED.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

/// How far ahead [`later`] goes when an addition would overflow: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `from + duration` without overflow: a point about thirty years on when the sum cannot be
/// represented. Configured durations are bounded at start-up; this keeps any that are not (a
/// caller's `grpc-timeout`, an upstream `x-acs-retry-after`) from panicking a call.
pub(crate) fn later(from: Instant, duration: Duration) -> Instant {
    from.checked_add(duration)
        .or_else(|| from.checked_add(FAR_FUTURE))
        .unwrap_or(from)
}

/// Time kept back from the caller's deadline so the handler answers before tonic cancels.
const MARGIN: Duration = Duration::from_millis(20);

/// When the caller stops waiting, as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// When the call's connection stops carrying streams because of its age
/// (`server.max_connection_age`), as a request extension: a long stream ends by then with
/// UNAVAILABLE, for the caller to resume on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionEnd(pub Instant);

/// Records the caller's deadline on an incoming request (used with `MapRequestLayer`).
pub(crate) fn record<B>(mut request: http::Request<B>) -> http::Request<B> {
    if let Some(timeout) = grpc_timeout(request.headers()) {
        let deadline = Deadline(later(Instant::now(), timeout.saturating_sub(MARGIN)));
        request.extensions_mut().insert(deadline);
    }
    request
}

/// The instant a call must have answered by: the caller's deadline, bounded by `limit`.
pub(crate) fn effective(caller: Option<&Deadline>, limit: Duration) -> Instant {
    let ours = later(Instant::now(), limit);
    caller.map_or(ours, |d| d.0.min(ours))
}

/// Parses `grpc-timeout`: up to 8 digits and a unit (`H M S m u n`).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(timeout("123456789S"), None);
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout("5x"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn later_never_overflows() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let huge = later(now, Duration::MAX);
        assert!(huge > now + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(effective(None, Duration::MAX), later(now, Duration::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn records_the_deadline_less_the_margin_and_bounds_it() {
        let request = http::Request::builder()
            .header("grpc-timeout", "1S")
            .body(())
            .unwrap();
        let start = Instant::now();
        let request = record(request);
        let deadline = request.extensions().get::<Deadline>().copied().unwrap();
        assert_eq!(deadline.0, start + Duration::from_secs(1) - MARGIN);
        assert_eq!(
            effective(Some(&deadline), Duration::from_secs(60)),
            deadline.0
        );
        assert_eq!(
            effective(Some(&deadline), Duration::from_millis(10)),
            start + Duration::from_millis(10)
        );
        assert_eq!(
            effective(None, Duration::from_secs(5)),
            start + Duration::from_secs(5)
        );
    }
}
