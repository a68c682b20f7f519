//! The guarded server against real sockets on loopback: each attack beside a
//! normal request that must still work.

use super::*;
use std::net::Ipv4Addr;

const AUTHORIZATION: &str = "Bearer test-token-test-token";

/// Short timeouts so that every attack ends within a few seconds.
fn limits() -> Limits {
    Limits {
        head_bytes: 4 << 10,
        head_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(1),
        per_peer: 8,
        total: 16,
    }
}

/// The agent's shape in miniature: /health is open, everything else
/// needs the token, and a POST reads its whole body and answers its size
/// or the error that ended the read.
fn handler(mut request: Request<'_>) {
    if request.url() == "/health" {
        let _ = request.respond(200, "text/plain", b"ok\n");
        return;
    }
    if request.header("Authorization") != Some(AUTHORIZATION) {
        let _ = request.respond(401, "text/plain", b"missing or wrong token\n");
        return;
    }
    if request.method() != Method::Post {
        let _ = request.respond(200, "text/plain", b"info\n");
        return;
    }
    match io::copy(request.as_reader(), &mut io::sink()) {
        Ok(bytes) => {
            let _ = request.respond(200, "text/plain", format!("{bytes}\n").as_bytes());
        }
        Err(e) => {
            let _ = request.respond(500, "text/plain", format!("{:?}: {e}\n", e.kind()).as_bytes());
        }
    }
}

fn start(limits: Limits) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0", limits).unwrap();
    let addr = server.local_addr().unwrap();
    thread::spawn(move || server.serve(&handler));
    addr
}

/// A connection from `source`: loopback answers on all of 127/8, so a
/// second address is a client socket bound to 127.0.0.2.
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else { panic!("the test server listens on IPv4") };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let (from, to) = (sockaddr(source, 0), sockaddr(*to.ip(), to.port()));
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, owned by the TcpStream from here on; both
    // addresses are valid sockaddr_in values of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        assert_eq!(libc::bind(fd, (&raw const from).cast(), size), 0, "bind: {}", io::Error::last_os_error());
        assert_eq!(libc::connect(fd, (&raw const to).cast(), size), 0, "connect: {}", io::Error::last_os_error());
        stream
    }
}

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Everything the server sends until it closes, or what came within 3 s.
fn answer(stream: &mut TcpStream) -> String {
    answer_within(stream, Duration::from_secs(3))
}

fn answer_within(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends one whole request on a new connection: the answer and how long it took.
fn exchange(from: Ipv4Addr, addr: SocketAddr, request: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = connect_from(from, addr);
    stream.write_all(request.as_bytes()).unwrap();
    (answer(&mut stream), started.elapsed())
}

fn health(from: Ipv4Addr, addr: SocketAddr) -> (String, Duration) {
    exchange(from, addr, "GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
}

fn info(from: Ipv4Addr, addr: SocketAddr) -> (String, Duration) {
    exchange(from, addr, &format!("GET /v1/info HTTP/1.1\r\nAuthorization: {AUTHORIZATION}\r\nConnection: close\r\n\r\n"))
}

/// What ferry's own client does: a streamed (chunked) upload on a pooled
/// connection, twice, so keep-alive is exercised too.
fn assert_normal_upload_works(addr: SocketAddr) {
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
    for _ in 0..2 {
        let payload = vec![7u8; 300_000];
        let mut payload = payload.as_slice();
        let request = ureq::http::Request::post(format!("http://{addr}/upload"))
            .header("Authorization", AUTHORIZATION)
            .body(ureq::SendBody::from_reader(&mut payload))
            .unwrap();
        let mut response = agent.run(request).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.body_mut().read_to_string().unwrap(), "300000\n");
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn slow_clients_do_not_stall_health_or_authenticated_requests() {
    let addr = start(limits());
    // The attack: a big declared body, three bytes, then silence.
    let mut strangers: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect_from(HOME, addr);
            s.write_all(b"POST /v1/restore HTTP/1.1\r\nContent-Length: 1000000\r\n\r\nabc").unwrap();
            s
        })
        .collect();
    // Slowloris: heads that never end.
    let mut trickling: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect_from(HOME, addr);
            s.write_all(b"GET /v1/info HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    // An authenticated upload that stalls keeps its reader busy meanwhile.
    let mut stalled = connect_from(ELSEWHERE, addr);
    stalled
        .write_all(format!("POST /upload HTTP/1.1\r\nAuthorization: {AUTHORIZATION}\r\nContent-Length: 1000000\r\n\r\nabc").as_bytes())
        .unwrap();

    for (answer, took) in [health(HOME, addr), info(HOME, addr), health(ELSEWHERE, addr), info(ELSEWHERE, addr)] {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    for stranger in &mut strangers {
        let answer = answer(stranger);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
    }
    // The heads that never end are cut off at the head timeout, unanswered.
    let started = Instant::now();
    for slow in &mut trickling {
        let _ = slow.write_all(b"x");
        assert_eq!(answer(slow), "");
    }
    assert!(started.elapsed() < limits().head_timeout + Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(answer(&mut stalled).starts_with("HTTP/1.1 500"));
    assert_normal_upload_works(addr);
}

#[test]
fn an_endless_header_line_is_cut_at_the_limit() {
    let addr = start(limits());
    let peak_before = peak_rss_kib();
    let started = Instant::now();
    let mut stream = connect_from(HOME, addr);
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nX-Endless: ").unwrap();
    let line = vec![b'a'; 64 << 10];
    let mut sent: u64 = 0;
    while sent < 256 << 20 {
        match stream.write(&line) {
            Ok(n) => sent += n as u64,
            Err(_) => break,
        }
    }
    // What the server did not read stays in the two sockets' buffers,
    // a few MiB on loopback; the line itself was 256 MiB.
    assert!(sent < 32 << 20, "the server took {sent} bytes of one header line");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let grew = peak_rss_kib().saturating_sub(peak_before);
    assert!(grew < 16 << 10, "peak RSS grew by {grew} KiB");
    // The refusal may be lost to the reset that unread bytes cause, but
    // whatever came back is the refusal.
    let answer = answer(&mut stream);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A head just over the limit, sent whole, is answered 431.
    let long = format!("GET /health HTTP/1.1\r\nX-Long: {}\r\n\r\n", "b".repeat(limits().head_bytes));
    let (answer, _) = exchange(HOME, addr, &long);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(health(HOME, addr).0.starts_with("HTTP/1.1 200"));
    assert_normal_upload_works(addr);
}

#[test]
fn ferrys_client_reads_the_401_instead_of_a_broken_pipe() {
    let addr = start(limits());
    let peer = crate::transfer::client::Peer::new(&addr.to_string(), Some("not-the-token-at-all".into()), Duration::from_secs(5), None);
    // Far more than the sockets' buffers hold: without `Expect`, the
    // client would still be writing when the agent closes.
    let payload = vec![0u8; 32 << 20];
    let error = peer.send_snapshot(&mut payload.as_slice(), 1).unwrap_err();
    assert!(error.to_string().contains("HTTP 401"), "{error}");
}

#[test]
fn a_stranger_gets_401_without_its_body_being_read() {
    let addr = start(limits());
    let mut stream = connect_from(HOME, addr);
    stream.write_all(b"POST /upload HTTP/1.1\r\nContent-Length: 1073741824\r\n\r\n").unwrap();
    stream.write_all(&[0u8; 1000]).unwrap();
    let mut head = [0u8; 12];
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
    // The server has closed: what the client still sends goes nowhere,
    // and the writes soon fail instead of filling a gigabyte.
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut sent: u64 = 0;
    while sent < 1 << 30 {
        match stream.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(_) => break,
        }
    }
    assert!(sent < 32 << 20, "the client could send {sent} bytes after the 401");

    // Expect: 100-continue is never answered with an invitation.
    let (answer, _) = exchange(HOME, addr, "POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_normal_upload_works(addr);
}

#[test]
fn one_address_cannot_take_every_connection() {
    let limits = limits();
    let addr = start(limits.clone());
    let held: Vec<TcpStream> = (0..limits.per_peer).map(|_| connect_from(HOME, addr)).collect();
    thread::sleep(Duration::from_millis(200));
    // One more from the same address is closed at once, unanswered.
    let started = Instant::now();
    let mut refused = connect_from(HOME, addr);
    assert_eq!(answer(&mut refused), "");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Another address still gets in, promptly.
    let (answer, took) = health(ELSEWHERE, addr);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(info(ELSEWHERE, addr).0.starts_with("HTTP/1.1 200"));
    // Places come back when connections end.
    drop(held);
    thread::sleep(Duration::from_millis(200));
    assert!(health(HOME, addr).0.starts_with("HTTP/1.1 200"));
    assert_normal_upload_works(addr);
}

#[test]
fn peers_are_counted_by_ipv4_address_or_ipv6_prefix() {
    let key = |text: &str| peer_key(text.parse().unwrap()).to_string();
    assert_eq!(key("192.0.2.7"), "192.0.2.7");
    assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
    assert_eq!(key("2001:db8:1:2::9"), key("2001:db8:1:2:ffff::1"));
    assert_ne!(key("2001:db8:1:2::9"), key("2001:db8:1:3::9"));
}

#[test]
fn a_head_request_gets_headers_only_and_the_connection_goes_on() {
    let addr = start(limits());
    let (answer, _) = exchange(HOME, addr, "HEAD /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    let (first, second) = answer.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 200") && first.contains("Content-Length: 3"), "{answer}");
    assert!(second.starts_with("HTTP/1.1 200") && second.ends_with("\r\n\r\nok\n"), "{answer}");
}

#[test]
fn a_full_agent_closes_the_longest_waiting_connection_to_make_room() {
    let limits = limits();
    let addr = start(limits.clone());
    // Every place taken by connections that send nothing, from many addresses.
    let mut held: Vec<TcpStream> = (0..limits.total)
        .map(|i| connect_from(Ipv4Addr::new(127, 0, 1, (i / limits.per_peer) as u8 + 1), addr))
        .collect();
    thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let (answer, took) = health(ELSEWHERE, addr);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    assert!(info(ELSEWHERE, addr).0.starts_with("HTTP/1.1 200"));
    // The oldest silent one was closed for them, unanswered, well before
    // its head timeout.
    let started = Instant::now();
    assert_eq!(answer(&mut held[0]), "");
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    assert_normal_upload_works(addr);
}

#[test]
fn connections_being_handled_are_never_closed_to_make_room() {
    // The uploads must still hold their places when the newcomer knocks, also
    // under qemu-user, where connecting 16 clients can take over a second.
    let limits = Limits { body_timeout: Duration::from_secs(6), ..limits() };
    let addr = start(limits.clone());
    let mut uploads: Vec<TcpStream> = (0..limits.total)
        .map(|i| {
            let mut s = connect_from(Ipv4Addr::new(127, 0, 1, (i / limits.per_peer) as u8 + 1), addr);
            s.write_all(format!("POST /upload HTTP/1.1\r\nAuthorization: {AUTHORIZATION}\r\nContent-Length: 100\r\n\r\nabc").as_bytes())
                .unwrap();
            s
        })
        .collect();
    // Every upload's head must be read before the newcomer knocks (a head
    // still awaited may be closed to make room): qemu-user is slow at it.
    thread::sleep(Duration::from_millis(1500));
    // No place can be made: the newcomer is closed unread...
    assert_eq!(health(ELSEWHERE, addr).0, "");
    // ...and the uploads end as their handler decides (here: timed out).
    for upload in &mut uploads {
        assert!(answer_within(upload, Duration::from_secs(10)).starts_with("HTTP/1.1 500"));
    }
    thread::sleep(Duration::from_millis(100));
    assert!(health(ELSEWHERE, addr).0.starts_with("HTTP/1.1 200"));
    assert_normal_upload_works(addr);
}

#[test]
fn a_stalled_upload_fails_after_the_body_timeout() {
    let limits = limits();
    let addr = start(limits.clone());
    for framing in ["Content-Length: 1000000\r\n\r\nabc", "Transfer-Encoding: chunked\r\n\r\n400\r\nabc"] {
        let started = Instant::now();
        let mut stream = connect_from(HOME, addr);
        stream.write_all(format!("POST /upload HTTP/1.1\r\nAuthorization: {AUTHORIZATION}\r\n{framing}").as_bytes()).unwrap();
        let answer = answer(&mut stream);
        let took = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(answer.contains("TimedOut"), "{answer}");
        assert!(took >= limits.body_timeout && took < limits.body_timeout * 3, "{took:?}");
    }
    // A peer that vanishes mid-body is an error too, not a short body.
    let mut stream = connect_from(HOME, addr);
    stream
        .write_all(format!("POST /upload HTTP/1.1\r\nAuthorization: {AUTHORIZATION}\r\nContent-Length: 1000\r\n\r\nabc").as_bytes())
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let answer = answer(&mut stream);
    assert!(answer.contains("UnexpectedEof"), "{answer}");
    assert_normal_upload_works(addr);
}
