//! The agent's HTTP/1.1 connections, guarded against strangers (issue 11,
//! findings 4–6): ferry owns the accept loop and every `TcpStream`;
//! `ureq-proto`'s sans-IO server state machine parses each request head and
//! frames its body (Content-Length or chunked), so no HTTP parsing lives here.
//!
//! The contract, in the order things happen to a connection:
//!
//! 1. **Admission.** A connection is accepted, then closed at once without a
//!    byte read when its peer's address (IPv6: its /64) already holds
//!    `per_peer` connections. When the agent holds `total`, the connection
//!    that has waited longest for a request head is closed to make room (a
//!    client that sends its request at once is never that one, a slowloris
//!    is); only when every connection is inside a handler is the newcomer
//!    closed instead. Each admitted connection has its own thread: a stalled
//!    connection blocks nobody else.
//! 2. **Head.** The request line and headers must fit in `head_bytes` (else
//!    431) and parse (else 400); both answers close the connection. The first
//!    byte of a request must come within `idle_timeout` (`head_timeout` for
//!    the first request of a connection), and the whole head within
//!    `head_timeout` of its first byte, however slowly it trickles: a
//!    connection that misses either is closed without an answer.
//! 3. **Handler.** It gets a [`Request`] before any byte of the body is read.
//!    The body is read only when the handler reads it (`Expect:
//!    100-continue` is answered on that first read, so a refused client is
//!    never invited to send), and every read fails with `TimedOut` after
//!    `body_timeout` without a byte, so a stalled upload ends as an I/O error
//!    in whatever reads it.
//! 4. **Answer.** [`Request::respond`] writes a fixed-length answer within
//!    `body_timeout`. The connection is kept for another request only when
//!    the body was read to its end and the client did not ask to close; an
//!    answer given without reading the body (a refusal) closes it, so that
//!    body is never read. A handler that drops its request unanswered closes
//!    the connection too.
//!
//! The guard is written against [`Stream`], which plain TCP implements; TLS
//! (issue 12) implements it for a rustls `StreamOwned` over the accepted
//! `TcpStream`, whose timeouts then bound every read and write too.
//!
//! With TLS ([`Server::with_tls`]) an admitted connection first completes
//! its handshake, on its own thread, within `head_timeout` as a whole (a
//! client that stalls it is closed like a slowloris, and is evictable all
//! along); a connection whose handshake fails is closed without a byte of
//! HTTP read or written. Each request then names the verified client:
//! [`Request::peer`].

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ureq_proto::BodyMode;
use ureq_proto::http::{self as proto, header};
use ureq_proto::server::state::{RecvBody, RecvRequest, Send100};
use ureq_proto::server::{RecvRequestResult, Reply};

use super::tls::Acceptor;
use crate::identity;

/// What one connection may cost the agent. The defaults suit a 512 MB board.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Request line and headers together; ferry's own requests need < 1 KiB.
    pub head_bytes: usize,
    /// The whole head must arrive within this from its first byte.
    pub head_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The longest silence inside a body, and the longest an answer may take
    /// to be written.
    pub body_timeout: Duration,
    /// Connections one IP address may hold at once.
    pub per_peer: usize,
    /// Connections the agent holds at once.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_bytes: 8 << 10,
            head_timeout: Duration::from_secs(10),
            // Below ureq's 15 s pool age would race its reuse check; ureq
            // probes a pooled connection before reusing it, so either works.
            idle_timeout: Duration::from_secs(15),
            // A source streams a payload as it packs it and never pauses for
            // long; a peer silent for a minute is gone, and the restore lock
            // it holds must come back.
            body_timeout: Duration::from_secs(60),
            // A migration uses 1–2 connections, a replicating source a few
            // more: 8 per address is room enough.
            per_peer: 8,
            // Each connection is a thread (a few tens of KiB resident) and an
            // input buffer of `head_bytes` until its body is read: 64 cost
            // a few MiB at most. Strangers who fill them only push each other
            // out (see `Admitted::admit`).
            total: 64,
        }
    }
}

/// A transport the guard can bound in time: plain TCP or TLS over it.
pub(crate) trait Stream: Read + Write + Send {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()>;
    /// Ends the connection in both directions.
    fn close(&mut self);
}

impl Stream for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        TcpStream::set_write_timeout(self, Some(timeout))
    }

    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// The methods the agent answers; anything else is `Other`, answered 404 by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Delete,
    Other(String),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Get => f.write_str("GET"),
            Method::Post => f.write_str("POST"),
            Method::Delete => f.write_str("DELETE"),
            Method::Other(name) => f.write_str(name),
        }
    }
}

/// Input bytes buffered per connection once a body is being read: larger
/// reads for a payload, paid only by a client the handler chose to read.
const BODY_BUFFER: usize = 64 << 10;

/// The agent's listener.
pub(crate) struct Server {
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<Acceptor>>,
}

impl Server {
    /// A listener for plain TCP, until [`Server::with_tls`].
    pub(crate) fn bind(listen: &str, limits: Limits) -> io::Result<Server> {
        Ok(Server { listener: TcpListener::bind(listen)?, limits, tls: None })
    }

    /// Every connection must complete a mutually authenticated TLS handshake.
    pub(crate) fn with_tls(mut self, acceptor: Arc<Acceptor>) -> Server {
        self.tls = Some(acceptor);
        self
    }

    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the listener fails for good, and calls
    /// `handler` on each connection's thread for each of its requests.
    pub(crate) fn serve(&self, handler: &(dyn Fn(Request<'_>) + Sync)) -> io::Error {
        let admitted = Admitted::default();
        thread::scope(|scope| {
            loop {
                let (stream, peer) = match self.listener.accept() {
                    Ok(accepted) => accepted,
                    Err(error) if transient(&error) => {
                        // Out of descriptors or memory: let connections end
                        // before trying again rather than spinning.
                        log::warn!("cannot accept a connection now: {error}");
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Err(error) => return error,
                };
                let Some(ticket) = admitted.admit(peer_key(peer.ip()), &stream, &self.limits) else {
                    log::debug!("refused a connection from {peer}: too many open");
                    continue;
                };
                let (limits, tls) = (&self.limits, self.tls.as_deref());
                let spawned = thread::Builder::new().name("ferry-http".into()).spawn_scoped(scope, move || {
                    let Some((stream, verified)) = secure(stream, peer, tls, limits) else { return };
                    serve_connection(stream, peer, verified, limits, &ticket, handler);
                });
                if let Err(error) = spawned {
                    log::warn!("cannot start a thread for {peer}: {error}");
                }
            }
        })
    }
}

/// The connection as the guard reads it: plain, or after a TLS handshake
/// within `head_timeout`, with the client it verified. None when the
/// handshake failed (the connection is then closed).
fn secure(stream: TcpStream, peer: SocketAddr, tls: Option<&Acceptor>, limits: &Limits) -> Option<(Box<dyn Stream>, Option<identity::Peer>)> {
    let Some(acceptor) = tls else { return Some((Box::new(stream), None)) };
    match acceptor.accept(stream, limits.head_timeout) {
        Ok((stream, verified)) => {
            log::debug!("TLS connection from {peer}: {} ({})", verified.name, verified.fingerprint);
            Some((Box::new(stream), Some(verified)))
        }
        Err(refused) => {
            if refused.notable {
                log::info!("refused a TLS connection from {peer}: {}", refused.reason);
            } else {
                log::debug!("a TLS handshake from {peer} did not complete: {}", refused.reason);
            }
            None
        }
    }
}

/// What the per-peer cap counts by: the IPv4 address, or the IPv6 /64,
/// since one IPv6 host is commonly given a whole /64 to pick addresses from.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

fn transient(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted)
        || matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The connections held, so that a newcomer is admitted, refused, or makes room.
#[derive(Default)]
struct Admitted {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    next_id: u64,
    slots: HashMap<u64, Slot>,
    per_peer: HashMap<IpAddr, usize>,
}

struct Slot {
    peer: IpAddr,
    /// Since when it waits for a request head; None while a handler runs.
    waiting_since: Option<Instant>,
    /// A second handle on the socket, to close it from the accept loop.
    socket: TcpStream,
}

/// One admitted connection; gives its place back when dropped.
struct Ticket<'a> {
    admitted: &'a Admitted,
    id: u64,
}

impl Admitted {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `peer`, or None to close it unread.
    /// When every place is taken, the connection that has waited longest
    /// for a request head is closed to make room: a client that sends its
    /// request at once is never the longest waiting, a slowloris is.
    /// Connections whose request is being handled are never closed.
    fn admit(&self, peer: IpAddr, stream: &TcpStream, limits: &Limits) -> Option<Ticket<'_>> {
        let mut held = self.held();
        if held.per_peer.get(&peer).is_some_and(|&n| n >= limits.per_peer) {
            return None;
        }
        if held.slots.len() >= limits.total {
            let (_, oldest) = held.slots.iter().filter_map(|(id, slot)| Some((slot.waiting_since?, *id))).min()?;
            if let Some(evicted) = held.release(oldest) {
                log::debug!("closing a connection from {} that sent no request, to make room", evicted.peer);
                // Wakes its thread's blocked read with an end of stream.
                let _ = evicted.socket.shutdown(Shutdown::Both);
            }
        }
        let socket = stream.try_clone().ok()?;
        let id = held.next_id;
        held.next_id += 1;
        held.slots.insert(id, Slot { peer, waiting_since: Some(Instant::now()), socket });
        *held.per_peer.entry(peer).or_insert(0) += 1;
        Some(Ticket { admitted: self, id })
    }
}

impl Held {
    fn release(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(count) = self.per_peer.get_mut(&slot.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_peer.remove(&slot.peer);
            }
        }
        Some(slot)
    }
}

impl Ticket<'_> {
    /// Marks the connection as waiting for a head (evictable) or handled (not).
    fn waiting(&self, waiting: bool) {
        if let Some(slot) = self.admitted.held().slots.get_mut(&self.id) {
            slot.waiting_since = waiting.then(Instant::now);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.admitted.held().release(self.id);
    }
}

/// One connection's stream and the bytes read from it but not yet used.
pub(crate) struct Connection {
    stream: Box<dyn Stream>,
    input: Vec<u8>,
    start: usize,
    end: usize,
    read_timeout: Option<Duration>,
    /// Set when the connection must not carry another request.
    closing: bool,
    /// The client its TLS handshake verified; None on plain TCP.
    verified: Option<identity::Peer>,
}

/// Why no request could be read.
enum HeadError {
    /// The peer closed, went silent or timed out: nothing to answer.
    Gone,
    /// Answer this status, then close.
    Refuse(u16, &'static str),
}

impl Connection {
    fn buffered(&self) -> &[u8] {
        &self.input[self.start..self.end]
    }

    /// Reads more input within `timeout`, and before `deadline` if given.
    /// Ok(0) is the peer's end of stream.
    fn fill(&mut self, timeout: Duration, deadline: Option<Instant>) -> io::Result<usize> {
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let timeout = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(timeout),
                _ => return Err(io::Error::new(io::ErrorKind::TimedOut, "the request head came too slowly")),
            },
            None => timeout,
        };
        // One setsockopt per change, not per read: a body reads with one value.
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = Some(timeout);
        }
        match self.stream.read(&mut self.input[self.end..]) {
            Ok(n) => {
                self.end += n;
                Ok(n)
            }
            // SO_RCVTIMEO expiring is EAGAIN, which std reports as WouldBlock.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no data from the peer for {:.0} s", timeout.as_secs_f64()),
            )),
            Err(e) => Err(e),
        }
    }

    /// Reads the next request head, bounded in size and time.
    fn read_head(&mut self, limits: &Limits, first: bool) -> Result<(Reply<RecvRequest>, proto::Request<()>), HeadError> {
        let mut reply = Reply::new().map_err(|_| HeadError::Gone)?;
        let wait = if first { limits.head_timeout } else { limits.idle_timeout };
        let mut deadline = (self.start < self.end).then(|| Instant::now() + limits.head_timeout);
        loop {
            if self.start < self.end {
                match reply.try_request(self.buffered()) {
                    Ok((used, Some(request))) => {
                        self.start += used;
                        return Ok((reply, request));
                    }
                    Ok((_, None)) => {}
                    Err(ureq_proto::Error::HttpParseTooManyHeaders) => {
                        return Err(HeadError::Refuse(431, "too many headers"));
                    }
                    Err(_) => return Err(HeadError::Refuse(400, "not an HTTP/1.1 request")),
                }
                if self.end - self.start >= limits.head_bytes {
                    return Err(HeadError::Refuse(431, "request head too large"));
                }
            }
            let timeout = if deadline.is_some() { limits.head_timeout } else { wait };
            match self.fill(timeout, deadline) {
                Ok(0) | Err(_) => return Err(HeadError::Gone),
                Ok(_) => {
                    deadline.get_or_insert_with(|| Instant::now() + limits.head_timeout);
                }
            }
        }
    }

    /// Writes a whole answer; `close` says so to the client. The answer to
    /// a HEAD request has the headers of the body, not the body.
    fn write_answer(&mut self, status: u16, content_type: &str, body: &[u8], close: bool, head_only: bool, timeout: Duration) -> io::Result<()> {
        let reason = proto::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        let connection = if close { "close" } else { "keep-alive" };
        let mut answer = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if !head_only {
            answer.extend_from_slice(body);
        }
        self.stream.set_write_timeout(timeout)?;
        self.stream.write_all(&answer)?;
        self.stream.flush()
    }
}

/// Reads and answers requests on one connection until it must close.
fn serve_connection(
    stream: Box<dyn Stream>,
    peer: SocketAddr,
    verified: Option<identity::Peer>,
    limits: &Limits,
    ticket: &Ticket<'_>,
    handler: &(dyn Fn(Request<'_>) + Sync),
) {
    let mut connection =
        Connection { stream, input: vec![0; limits.head_bytes], start: 0, end: 0, read_timeout: None, closing: false, verified };
    let mut first = true;
    while !connection.closing {
        if !first {
            ticket.waiting(true);
        }
        let (reply, head) = match connection.read_head(limits, first) {
            Ok(request) => request,
            Err(HeadError::Gone) => break,
            Err(HeadError::Refuse(status, why)) => {
                log::warn!("refused a request from {peer}: {why}");
                let _ = connection.write_answer(status, "text/plain", format!("{why}\n").as_bytes(), true, false, limits.body_timeout);
                break;
            }
        };
        first = false;
        ticket.waiting(false);
        let wants_close = head.version() != proto::Version::HTTP_11
            || head.headers().get_all(header::CONNECTION).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let (body, length) = match reply.proceed() {
            Some(RecvRequestResult::ProvideResponse(_)) => (Body::Done, Some(0)),
            Some(RecvRequestResult::RecvBody(reply)) => {
                let length = match reply.body_mode() {
                    BodyMode::LengthDelimited(n) => Some(n),
                    _ => None,
                };
                (Body::Reading(reply), length)
            }
            // Whether the body is sized shows only once it is accepted.
            Some(RecvRequestResult::Send100(reply)) => (Body::Invited(reply), content_length(&head)),
            None => break,
        };
        let request = Request { head, peer, length, body, connection: &mut connection, limits, wants_close, answered: false };
        handler(request);
    }
    connection.stream.close();
}

/// The declared length of a body not yet accepted, as `ureq-proto` will frame it.
fn content_length(head: &proto::Request<()>) -> Option<u64> {
    let chunked = head.headers().get_all(header::TRANSFER_ENCODING).iter().next().is_some();
    let value = head.headers().get(header::CONTENT_LENGTH)?;
    if chunked {
        return None;
    }
    value.to_str().ok()?.parse().ok()
}

/// Where a request's body stands.
enum Body {
    /// The client waits for `100 Continue` before sending it.
    Invited(Reply<Send100>),
    Reading(Reply<RecvBody>),
    /// Read to its end, or there was none.
    Done,
    /// A read failed: what is left of it is unknown.
    Broken,
}

/// One request, handed to the handler before any of its body is read.
pub(crate) struct Request<'c> {
    head: proto::Request<()>,
    peer: SocketAddr,
    length: Option<u64>,
    body: Body,
    connection: &'c mut Connection,
    limits: &'c Limits,
    wants_close: bool,
    answered: bool,
}

impl Request<'_> {
    pub(crate) fn method(&self) -> Method {
        match *self.head.method() {
            proto::Method::GET => Method::Get,
            proto::Method::POST => Method::Post,
            proto::Method::DELETE => Method::Delete,
            ref other => Method::Other(other.as_str().to_string()),
        }
    }

    /// The path and query, as sent.
    pub(crate) fn url(&self) -> &str {
        self.head.uri().path_and_query().map_or("/", |p| p.as_str())
    }

    /// A header's value, if present and text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The client the TLS handshake verified; None on plain TCP (`--insecure`).
    pub(crate) fn peer(&self) -> Option<&identity::Peer> {
        self.connection.verified.as_ref()
    }

    /// The body's declared length; None when it is chunked.
    pub(crate) fn body_length(&self) -> Option<u64> {
        self.length
    }

    pub(crate) fn as_reader(&mut self) -> &mut dyn Read {
        self
    }

    /// Answers the request. Unless its body was read to the end, the
    /// connection closes after the answer and the rest is never read.
    pub(crate) fn respond(mut self, status: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
        self.answered = true;
        let close = self.wants_close || !matches!(self.body, Body::Done);
        self.connection.closing = close;
        let head_only = self.head.method() == proto::Method::HEAD;
        self.connection.write_answer(status, content_type, body, close, head_only, self.limits.body_timeout)
    }

    fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Body::Invited(_) = self.body {
            let Body::Invited(invited) = std::mem::replace(&mut self.body, Body::Broken) else { return Ok(0) };
            let mut line = [0u8; 64];
            let (used, reply) = invited.accept(&mut line).map_err(invalid)?;
            self.connection.stream.set_write_timeout(self.limits.body_timeout)?;
            self.connection.stream.write_all(&line[..used])?;
            self.connection.stream.flush()?;
            self.body = if reply.is_ended() { Body::Done } else { Body::Reading(reply) };
        }
        let Body::Reading(reply) = &mut self.body else {
            return match self.body {
                Body::Broken => Err(io::Error::other("an earlier read of this body failed")),
                _ => Ok(0),
            };
        };
        if out.is_empty() {
            return Ok(0);
        }
        // The head's buffer is enough for strangers; a body read is worth more.
        if self.connection.input.len() < BODY_BUFFER {
            self.connection.input.resize(BODY_BUFFER, 0);
        }
        match read_framed(reply, self.connection, self.limits.body_timeout, out) {
            Ok((written, true)) => {
                self.body = Body::Done;
                Ok(written)
            }
            Ok((written, false)) => Ok(written),
            Err(e) => {
                self.body = Body::Broken;
                Err(e)
            }
        }
    }
}

/// Reads body bytes into `out`, and whether the body has ended.
fn read_framed(reply: &mut Reply<RecvBody>, connection: &mut Connection, timeout: Duration, out: &mut [u8]) -> io::Result<(usize, bool)> {
    loop {
        let (used, written) = reply.read(connection.buffered(), out).map_err(invalid)?;
        connection.start += used;
        let ended = reply.is_ended();
        if written > 0 || ended {
            return Ok((written, ended));
        }
        if used > 0 {
            // A chunk header or trailer: framing without data.
            continue;
        }
        if connection.end - connection.start == connection.input.len() {
            return Err(invalid("a chunk header longer than the input buffer"));
        }
        if connection.fill(timeout, None)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection mid-body"));
        }
    }
}

impl Read for Request<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.read_body(out)
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if !self.answered {
            log::warn!("{} {} from {} was not answered: closing its connection", self.method(), self.url(), self.peer);
            self.connection.closing = true;
        }
    }
}

fn invalid(error: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad request body: {error}"))
}

#[cfg(test)]
mod tests;
