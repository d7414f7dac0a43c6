//! A tower layer around the CRI gRPC server that counts every call by method and status
//! code and times it, for `/metrics`.
//!
//! gRPC puts the status in the trailers of a response that got as far as a body, and in
//! the headers of one that failed at once ("trailers-only"); a streaming call ends when
//! its body does, so the call is recorded when the status is seen, whichever way it comes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};

use crate::metrics::METRICS;

/// gRPC status codes by number, named as grpc-go and kubelet's metrics name them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn code_name(value: Option<&http::HeaderValue>) -> Option<&'static str> {
    let n: usize = value?.to_str().ok()?.parse().ok()?;
    Some(CODES.get(n).copied().unwrap_or("Unknown"))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

/// What a call needs to be recorded once.
struct Call {
    method: String,
    started: Instant,
}

impl Call {
    fn record(self, code: &str) {
        METRICS.rpc(&self.method, code, self.started.elapsed());
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<TimedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call {
            method: request.uri().path().to_string(),
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let call = match code_name(response.headers().get("grpc-status")) {
                Some(code) => {
                    call.record(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|body| TimedBody {
                inner: Box::pin(body),
                call,
            }))
        })
    }
}

/// The response body, recording its call when the trailers (or the end) go by.
pub struct TimedBody<B> {
    inner: Pin<Box<B>>,
    call: Option<Call>,
}

impl<B> Drop for TimedBody<B> {
    fn drop(&mut self) {
        // The client went away before the status was sent.
        if let Some(call) = self.call.take() {
            call.record("Canceled");
        }
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = self.call.take()
                {
                    call.record(code_name(trailers.get("grpc-status")).unwrap_or("Unknown"));
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.record("Unknown");
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
