//! Fault injection: answers queued to replace the real one (errors, raw bodies, delays, dropped
//! connections), for any request or for one action, before or after acting on it.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::answer;
use super::connection::Connection;

/// An answer the sandbox gives the next request instead of the real one (tests, demos).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Closes the connection (with a TCP reset) after reading the request, without answering
    /// and without acting on it.
    Drop,
    /// Acts on the request (verifies and applies it, e.g. starts the upgrade), then answers with
    /// the inner fault instead of the real answer: Alibaba did it, the client never heard.
    AfterActing(Box<Fault>),
    /// An Alibaba error body with this HTTP status and `Code`, and `x-acs-retry-after` if given.
    Error {
        status: u16,
        code: &'static str,
        retry_after_ms: Option<u64>,
    },
    /// A raw body, e.g. something unreadable.
    Body { status: u16, body: &'static str },
    /// The normal answer, after a delay.
    Delay(Duration),
}

impl Fault {
    /// Whether the client never hears an answer.
    pub(super) fn severs(&self) -> bool {
        match self {
            Fault::Drop => true,
            Fault::AfterActing(inner) => inner.severs(),
            _ => false,
        }
    }
}

/// Queued faults, in order, each for one action or (`None`) any.
#[derive(Debug, Default)]
pub(super) struct FaultQueue(VecDeque<(Option<&'static str>, Fault)>);

impl FaultQueue {
    /// Queues `fault` for the next request naming `action`, or the next request if `None`.
    pub(super) fn push(&mut self, action: Option<&'static str>, fault: Fault) {
        self.0.push_back((action, fault));
    }

    /// Takes the first fault queued for `action` or for any request; later ones stay queued.
    pub(super) fn take_for(&mut self, action: &str) -> Option<Fault> {
        let position = self
            .0
            .iter()
            .position(|(only, _)| only.is_none_or(|a| a == action))?;
        self.0.remove(position).map(|(_, fault)| fault)
    }
}

/// The answer a fault gives instead of the real one; `None` to answer normally (after a delay).
pub(super) async fn inject(fault: Fault, connection: &Connection) -> Option<Response> {
    match fault {
        Fault::Error {
            status,
            code,
            retry_after_ms,
        } => {
            let mut response = answer::error(status, code, "injected by the sandbox");
            if let Some(ms) = retry_after_ms {
                response
                    .headers_mut()
                    .insert("x-acs-retry-after", HeaderValue::from(ms));
            }
            Some(response)
        }
        Fault::Body { status, body } => Some((answer::status_code(status), body).into_response()),
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Fault::Drop => {
            // The response below is never written: the connection fails on the first write.
            connection.sever();
            Some(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        // Nested `AfterActing`: the request was acted on already.
        Fault::AfterActing(inner) => Box::pin(inject(*inner, connection)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_for_one_action_lets_other_actions_pass_it_by() {
        let mut queue = FaultQueue::default();
        queue.push(Some("Upgrade"), Fault::Drop);
        queue.push(None, Fault::Delay(Duration::from_secs(1)));

        assert!(matches!(queue.take_for("Describe"), Some(Fault::Delay(_))));
        assert!(queue.take_for("Describe").is_none());
        assert!(matches!(queue.take_for("Upgrade"), Some(Fault::Drop)));
        assert!(queue.take_for("Upgrade").is_none());
    }

    #[test]
    fn faults_are_taken_in_the_order_queued() {
        let mut queue = FaultQueue::default();
        queue.push(None, Fault::Drop);
        queue.push(Some("Upgrade"), Fault::Delay(Duration::from_secs(1)));

        assert!(matches!(queue.take_for("Upgrade"), Some(Fault::Drop)));
        assert!(matches!(queue.take_for("Upgrade"), Some(Fault::Delay(_))));
    }
}
