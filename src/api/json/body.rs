//! The bodies of a JSON call: the gRPC request body made from the JSON request when the
//! service reads it, and a streamed gRPC answer written as JSON lines.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::Frame;
use prost_reflect::MessageDescriptor;
use tonic::Code;
use tonic::body::Body;

use super::call::HttpCall;
use super::message;
use super::status::{self, StatusWriter, internal};

type MessageFuture = Pin<Box<dyn Future<Output = Result<Bytes, tonic::Status>> + Send>>;

/// The gRPC request body: one message frame, made from the JSON request when first polled.
pub(super) struct MessageBody {
    message: Option<MessageFuture>,
}

impl MessageBody {
    pub(super) fn new(
        message: impl Future<Output = Result<Bytes, tonic::Status>> + Send + 'static,
    ) -> Self {
        Self {
            message: Some(Box::pin(message)),
        }
    }
}

impl http_body::Body for MessageBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let Some(message) = self.message.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(message.as_mut().poll(cx));
        self.message = None;
        Poll::Ready(Some(frame.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none()
    }
}

/// A streamed gRPC answer as JSON lines; a failure after the first message is a last line
/// `{"error": <google.rpc.Status>}`.
pub(super) struct JsonLines {
    body: Body,
    buffer: BytesMut,
    output: MessageDescriptor,
    statuses: StatusWriter,
    call: HttpCall,
    ended: bool,
}

impl JsonLines {
    /// The answer's `body`, after its `first` bytes.
    pub(super) fn new(
        first: Bytes,
        body: Body,
        output: MessageDescriptor,
        statuses: StatusWriter,
        call: HttpCall,
    ) -> Self {
        Self {
            body,
            buffer: BytesMut::from(first.as_ref()),
            output,
            statuses,
            call,
            ended: false,
        }
    }

    fn end(&mut self, status: &tonic::Status) -> Option<Bytes> {
        self.ended = true;
        let http = if status.code() == Code::Ok {
            StatusCode::OK
        } else {
            status::http_status(status)
        };
        self.call.finish(status.code(), http);
        (status.code() != Code::Ok).then(|| {
            let mut line = b"{\"error\":".to_vec();
            line.extend(self.statuses.json(status));
            line.extend(b"}\n");
            Bytes::from(line)
        })
    }
}

impl http_body::Body for JsonLines {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let failed = match message::next_frame(&mut this.buffer) {
                Ok(Some(payload)) => match message::answer(&this.output, &payload) {
                    Ok(mut line) => {
                        line.push(b'\n');
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))));
                    }
                    Err(e) => Some(internal(&e)),
                },
                Ok(None) => None,
                Err(e) => Some(internal(&e)),
            };
            let status = match failed {
                Some(status) => status,
                None => match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            this.buffer.extend_from_slice(&data);
                            continue;
                        }
                        Err(frame) => match frame.trailers_ref().and_then(status::grpc_status) {
                            Some(status) => status,
                            None => internal("the answer's trailers had no status"),
                        },
                    },
                    Some(Err(status)) => status,
                    None => internal("the answer ended without a status"),
                },
            };
            if let Some(line) = this.end(&status) {
                return Poll::Ready(Some(Ok(Frame::data(line))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
