//! The HTTP/1.1 server loop: accepts connections up to a limit, serves each with hyper, and closes the
//! ones that hold a socket without using it (a head that does not arrive, a kept-alive connection left
//! idle). On shutdown it stops accepting, lets the requests in flight finish, then returns.
//!
//! `axum::serve` has none of these limits, hence this loop. How long a request *body* may take is
//! decided where the body is read (`http::extract`), which can answer 408 with the error body.
//!
//! Errors hyper answers itself, before any service runs, cannot carry the JSON error body nor an
//! `X-Request-Id`: hyper 1 writes a bare status line in `proto::h1::role::Server::on_error` and closes
//! the connection, and its builder has no hook for that response. So hyper's limits are set above the
//! API's own (`HttpSettings::max_uri_bytes`, `max_headers`, `max_header_bytes`, which the API enforces
//! in a layer that answers 414 and 431 in its error format): a URI up to 65,534 bytes (the longest the
//! `http` crate represents), [`HYPER_MAX_HEADERS`] headers and a head within hyper's read buffer (about
//! 400 KiB by default) reach the API. Only a head hyper cannot parse (400), or one past those, still
//! gets hyper's bare answer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use chatsys_settings::HttpSettings;

/// Headers hyper parses in one request; above the most the API may be set to answer
/// ([`chatsys_settings::MAX_HEADERS_CEILING`]), so a request over the API's limit reaches it.
const HYPER_MAX_HEADERS: usize = 256;
const _: () = assert!(HYPER_MAX_HEADERS > chatsys_settings::MAX_HEADERS_CEILING as usize);

/// What a connection is waiting for, which decides how long it may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Just accepted, nothing received yet: the first head must come within the header timeout.
    Opened(Instant),
    /// A head has started (or the connection opened) at this instant and is not complete yet.
    Head(Instant),
    /// This many requests are being served; a body's own deadline applies, not the connection's.
    Busy(usize),
    /// Since this instant no request is being served: a kept-alive connection between requests, or
    /// one still writing its last response.
    Idle(Instant),
    /// A long-lived response (an event stream) is being written, and it last wrote at this instant: a
    /// client that stops reading it for the idle timeout is cut off, one that reads keeps it.
    Streaming(Instant),
}

/// Marks a response as long-lived: its connection is busy for as long as the body is being written,
/// instead of idle once the handler has returned. Its body must write at least once per idle timeout
/// (an event stream's heartbeat).
#[derive(Debug, Clone, Copy)]
pub struct LongLived;

impl Phase {
    fn deadline(self, header: Duration, idle: Duration) -> Option<Instant> {
        match self {
            Phase::Opened(since) | Phase::Head(since) => Some(since + header),
            Phase::Idle(since) | Phase::Streaming(since) => Some(since + idle),
            Phase::Busy(_) => None,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` turns true (or its sender is dropped), then waits for
/// every connection to end: idle ones close at once, the others after their request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections as usize));
    let (header, idle) = (settings.header_timeout(), settings.idle_timeout());
    loop {
        // A slot first, then accept: connections over the limit wait in the listen backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the connection slots are never closed"),
            () = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            (header, idle),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    // Each connection holds a slot until it ends, so all the slots back means all connections ended.
    let _ = slots.acquire_many(settings.max_connections).await;
}

/// Resolves when `shutdown` turns true, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A failed accept: a client that gave up before being accepted is nothing, anything else (out of file
/// descriptors, say) is logged and waited out a little rather than retried in a tight loop.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    (header, idle): (Duration, Duration),
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let phase = Arc::new(PhaseCell(std::sync::Mutex::new(Phase::Opened(
        Instant::now(),
    ))));
    let io = TokioIo::new(Watched {
        stream,
        phase: phase.clone(),
    });
    let service = Tracked {
        router,
        phase: phase.clone(),
    };
    // Hyper's own header timeout also runs while a kept-alive connection waits for its next request,
    // which would make the idle timeout the header timeout; the watchdog below times both instead.
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .max_headers(HYPER_MAX_HEADERS)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let overdue = overdue(&phase, header, idle);
    let mut overdue = std::pin::pin!(overdue);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            // Dropping the connection closes the socket; nothing is being served (see `overdue`).
            () = &mut overdue => return,
            () = stopped(&mut shutdown), if !stopping => {
                stopping = true;
                // A connection that never sent a byte has nothing to finish.
                if matches!(phase.get(), Phase::Opened(_)) {
                    return;
                }
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection's phase. Requests write it as they start and end, and never wake the watchdog, which
/// reads it when it wakes on its own: that keeps the cost per request to a few uncontended locks.
struct PhaseCell(std::sync::Mutex<Phase>);

impl PhaseCell {
    fn get(&self) -> Phase {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *phase = change(*phase);
    }
}

/// Resolves when the connection has waited too long for a head, or sat idle too long. It wakes at the
/// current phase's deadline, and at least once every `min(header, idle)`: no phase's deadline is nearer
/// than that when the phase begins, so each is seen before it passes and kept exactly.
async fn overdue(phase: &PhaseCell, header: Duration, idle: Duration) {
    let period = header.min(idle);
    loop {
        let now = Instant::now();
        let wake_at = match phase.get().deadline(header, idle) {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline.min(now + period),
            None => now + period,
        };
        tokio::time::sleep_until(wake_at).await;
    }
}

/// The socket, noting when a request's first byte arrives on a connection that was idle.
struct Watched {
    stream: TcpStream,
    phase: Arc<PhaseCell>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.phase.update(|phase| match phase {
                Phase::Idle(_) => Phase::Head(Instant::now()),
                Phase::Opened(since) => Phase::Head(since),
                Phase::Head(_) | Phase::Busy(_) | Phase::Streaming(_) => phase,
            });
        }
        polled
    }
}

impl Watched {
    /// A long-lived response that wrote something is still being read.
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.phase.update(|phase| match phase {
                Phase::Streaming(_) => Phase::Streaming(Instant::now()),
                other => other,
            });
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, noting when requests start and end on the connection.
struct Tracked {
    router: Router,
    phase: Arc<PhaseCell>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let serving = Serving::start(self.phase.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request.map(Body::new)).await;
            match response {
                Ok(response) if response.extensions().get::<LongLived>().is_some() => {
                    Ok(serving.streaming(response))
                }
                other => other,
            }
        })
    }
}

/// One request being served; when the last one ends (or is dropped with its connection), the
/// connection is idle.
struct Serving(Arc<PhaseCell>);

impl Serving {
    fn start(phase: Arc<PhaseCell>) -> Self {
        phase.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        Serving(phase)
    }
}

impl Serving {
    /// The connection stays in `Streaming` until the response's body ends or is dropped.
    fn streaming(self, response: Response) -> Response {
        self.0.update(|_| Phase::Streaming(Instant::now()));
        let (parts, body) = response.into_parts();
        let body = Body::from_stream(ServingBody {
            body: body.into_data_stream(),
            _serving: self,
        });
        Response::from_parts(parts, body)
    }
}

/// A response body holding its request's [`Serving`].
struct ServingBody {
    body: axum::body::BodyDataStream,
    _serving: Serving,
}

impl futures::Stream for ServingBody {
    type Item = Result<bytes::Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }
}
