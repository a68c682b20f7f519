//! A small synchronous client for etcd's v3 API through its JSON gateway.
//!
//! etcd's native API is gRPC; every etcd since 3.3 also serves the same calls
//! as JSON over HTTP/1.1 (`POST /v3/kv/range`, `/v3/lease/grant`, …), which
//! ferry's ureq speaks with no gRPC stack and no async runtime. Checked
//! against Debian bookworm's etcd 3.4.23:
//! - keys and values are base64 in both directions;
//! - 64-bit integers come back as JSON strings (`"revision":"5"`), and fields
//!   at their default are left out (`succeeded` is absent when a transaction
//!   failed, `TTL` when a lease is gone): read both shapes, default to zero;
//! - `/v3/lease/keepalive` is a stream in gRPC: one JSON request gives one
//!   `{"result":{…}}` line and the answer ends with the request body.
//!
//! Several endpoints (`--etcd URL,URL`) are tried in turn, starting with the
//! last one that answered. A request that could not be *sent* (refused, no
//! route, no name) moves on to the next; one sent whose answer was lost
//! moves on only when repeating it is harmless (reads, keep-alive, revoke):
//! a transaction may have been applied, and repeating a compare-and-swap
//! that won would report that it lost.
//!
//! `https://` endpoints are reached over TLS 1.3 with [`EtcdTls`] (etcd's CA,
//! this host's certificate; see `etcd_tls.rs`), given to
//! [`Etcd::connect_with`]: the agent chains the same rustls connector as
//! the peer client (`tls_client.rs`). All endpoints of one etcd share one
//! scheme. A TLS failure is not a network one: each endpoint is still tried,
//! then the failure is reported with what to fix rather than as unreachable.

use std::fmt;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde_json::{json, Map, Value};
use ureq::Agent;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, TcpConnector};

pub(crate) use super::etcd_tls::EtcdTls;
use crate::tls_client::TlsConnector;

/// How much of one answer is read: a range over the fleet's prefix is the
/// largest, a few KiB per node and container.
const ANSWER_LIMIT: u64 = 16 << 20;

/// How long an answer may take to start coming back, by default.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// gRPC's NOT_FOUND, as the gateway reports a lease that is gone.
const GRPC_NOT_FOUND: i64 = 5;

#[derive(Debug)]
pub(crate) enum Error {
    /// `--etcd` is not a list of `http://HOST:PORT` or `https://HOST:PORT` URLs.
    BadUrl(String),
    /// TLS with etcd failed: a certificate was refused, one way or the other.
    Tls { endpoint: String, detail: String },
    /// No endpoint could be reached: nothing was sent.
    Unreachable { endpoints: String, detail: String },
    /// The request was sent, its answer was lost: it may have been applied.
    AnswerLost { endpoint: String, call: &'static str, detail: String },
    /// etcd answered with an error.
    Refused { endpoint: String, call: &'static str, status: u16, code: i64, message: String },
    /// The answer is not etcd's JSON.
    Protocol { endpoint: String, call: &'static str, detail: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadUrl(why) => f.write_str(why),
            Error::Tls { endpoint, detail } => write!(f, "TLS to etcd at {endpoint} failed: {detail}"),
            Error::Unreachable { endpoints, detail } => write!(
                f,
                "etcd cannot be reached at {endpoints} ({detail}) — is etcd running there, and is --etcd its client \
                 URL (its --advertise-client-urls, e.g. http://10.0.0.1:2379)?"
            ),
            Error::AnswerLost { endpoint, call, detail } => write!(
                f,
                "etcd at {endpoint} did not answer {call} ({detail}): it may or may not have been applied — read the \
                 fleet's state again before repeating it"
            ),
            Error::Refused { endpoint, call, status, message, .. } => {
                write!(f, "etcd at {endpoint} refused {call} (HTTP {status}): {message}")
            }
            Error::Protocol { endpoint, call, detail } => {
                write!(f, "etcd at {endpoint} answered {call} with something ferry cannot read: {detail}")
            }
        }
    }
}

impl std::error::Error for Error {}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (0: absent).
    pub create_revision: i64,
    /// The revision of its last change: unique across the store, never reused.
    pub mod_revision: i64,
    /// How many times it was written since it was created (1 at creation).
    pub version: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A lease as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub id: i64,
    pub ttl_secs: i64,
}

/// How a compare in a transaction holds.
// The whole set, like `Compare`, `Op` and `delete`: what the coming balancer
// and fencing need is not all used yet, and all of it is tested against etcd.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction, on one key. An absent key has version,
/// create and mod revision 0.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Compare {
    Version(String, Cmp, i64),
    ModRevision(String, Cmp, i64),
    CreateRevision(String, Cmp, i64),
    Value(String, Cmp, Vec<u8>),
}

/// One operation of a transaction.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<i64> },
    Get(String),
    Delete(String),
}

/// Operations run as one: `success` if every compare holds, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What a transaction did: which branch ran, and what each of that branch's
/// `Get`s found, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnOutcome {
    pub succeeded: bool,
    pub gets: Vec<Vec<Kv>>,
}

/// etcd, reached at one or more client URLs.
pub(crate) struct Etcd {
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first next time.
    preferred: AtomicUsize,
    agent: Agent,
    /// For `https://` endpoints.
    tls: Option<Arc<EtcdTls>>,
}

impl Clone for Etcd {
    fn clone(&self) -> Etcd {
        Etcd {
            endpoints: self.endpoints.clone(),
            preferred: AtomicUsize::new(self.preferred.load(Ordering::Relaxed)),
            agent: self.agent.clone(),
            tls: self.tls.clone(),
        }
    }
}

impl Etcd {
    /// `urls` as `--etcd` gives them: `http://HOST:PORT`, comma-separated.
    /// Commands go through `commands::etcd_client`, which also does https.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn connect(urls: &str) -> Result<Etcd> {
        Etcd::connect_with(urls, None)
    }

    /// `urls` as `--etcd` gives them, `https://` ones reached with `tls`.
    pub(crate) fn connect_with(urls: &str, tls: Option<EtcdTls>) -> Result<Etcd> {
        let (endpoints, https) = parse_endpoints(urls)?;
        if https && tls.is_none() {
            return Err(Error::BadUrl(format!(
                "'{}' is https://: ferry needs the CA that issued etcd's certificate — give --etcd-ca FILE (PEM), or \
                 install the fleet CA as ca.pem in ferry's config dir",
                endpoints[0]
            )));
        }
        let tls = tls.map(Arc::new);
        Ok(Etcd { endpoints, preferred: AtomicUsize::new(0), agent: agent(ANSWER_WITHIN, tls.as_deref()), tls })
    }

    /// The same etcd, waiting at most `timeout` for an answer to start: a
    /// lease renewal must give up in time to try again before the TTL ends.
    pub(crate) fn answering_within(&self, timeout: Duration) -> Etcd {
        Etcd { agent: agent(timeout.min(ANSWER_WITHIN), self.tls.as_deref()), ..self.clone() }
    }

    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A lease of `ttl_secs` seconds; etcd may grant a longer one (its
    /// minimum is about 1.5 election timeouts), never a shorter.
    pub(crate) fn grant(&self, ttl_secs: i64) -> Result<Lease> {
        let (endpoint, answer) = self.call("lease grant", "/v3/lease/grant", &json!({ "TTL": ttl_secs }), true)?;
        let id = int(&answer, "ID");
        if id == 0 {
            return Err(protocol(&endpoint, "lease grant", format!("no lease ID in {answer}")));
        }
        Ok(Lease { id, ttl_secs: int(&answer, "TTL") })
    }

    /// Renews `lease` once: its TTL from now, or None when it is gone
    /// (expired or revoked), which no renewal brings back.
    pub(crate) fn keep_alive(&self, lease: i64) -> Result<Option<i64>> {
        let (endpoint, answer) =
            self.call("lease keep-alive", "/v3/lease/keepalive", &json!({ "ID": lease.to_string() }), true)?;
        let result = match (answer.get("result"), answer.get("error")) {
            (Some(result), _) => result,
            (None, Some(error)) => return Err(stream_error(&endpoint, "lease keep-alive", error)),
            (None, None) => return Err(protocol(&endpoint, "lease keep-alive", format!("no result in {answer}"))),
        };
        let ttl = int(result, "TTL");
        Ok((ttl > 0).then_some(ttl))
    }

    /// How long `lease` has left, or None when it is gone.
    pub(crate) fn time_to_live(&self, lease: i64) -> Result<Option<i64>> {
        let (_, answer) =
            self.call("lease time-to-live", "/v3/lease/timetolive", &json!({ "ID": lease.to_string() }), true)?;
        let ttl = int(&answer, "TTL");
        Ok((ttl >= 0).then_some(ttl))
    }

    /// Ends `lease` now, deleting its keys. A lease already gone is no error.
    pub(crate) fn revoke(&self, lease: i64) -> Result<()> {
        match self.call("lease revoke", "/v3/lease/revoke", &json!({ "ID": lease.to_string() }), true) {
            Ok(_) => Ok(()),
            Err(Error::Refused { code: GRPC_NOT_FOUND, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Writes `key`, attached to `lease` if given. Returns the store's revision.
    pub(crate) fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64> {
        let body = put_body(key, value, lease);
        let (_, answer) = self.call("put", "/v3/kv/put", &body, true)?;
        Ok(revision(&answer))
    }

    /// `key`, if it exists.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Kv>> {
        let (endpoint, answer) = self.call("range", "/v3/kv/range", &range_body(key, false), true)?;
        Ok(kvs(&endpoint, "range", &answer)?.into_iter().next())
    }

    /// Every key that starts with `prefix`, in key order.
    pub(crate) fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>> {
        let (endpoint, answer) = self.call("range", "/v3/kv/range", &range_body(prefix, true), true)?;
        kvs(&endpoint, "range", &answer)
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn delete(&self, key: &str) -> Result<i64> {
        let (_, answer) = self.call("delete", "/v3/kv/deleterange", &json!({ "key": b64(key.as_bytes()) }), true)?;
        Ok(int(&answer, "deleted"))
    }

    /// Runs `txn` atomically. Never repeated on another endpoint once sent.
    pub(crate) fn txn(&self, txn: &Txn) -> Result<TxnOutcome> {
        let (endpoint, answer) = self.call("transaction", "/v3/kv/txn", &txn_body(txn), false)?;
        txn_outcome(&endpoint, &answer)
    }

    /// POSTs `body` to `path` on each endpoint in turn until one answers.
    /// Returns that endpoint and its answer, an error if etcd gave one.
    fn call(&self, call: &'static str, path: &str, body: &Value, repeatable: bool) -> Result<(String, Value)> {
        let encoded = body.to_string();
        let count = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut failures = Vec::new();
        let mut tls_failure = None;
        for index in (first..count).chain(0..first) {
            let endpoint = &self.endpoints[index];
            let request = ureq::http::Request::post(format!("{endpoint}{path}"))
                .header("Content-Type", "application/json")
                .body(encoded.as_bytes());
            let request = request.map_err(|e| Error::BadUrl(format!("'{endpoint}' is not a usable etcd URL: {e}")))?;
            let response = match self.agent.run(request) {
                Ok(response) => response,
                Err(error) => {
                    // A refused certificate ends the handshake before etcd
                    // reads the request: nothing was applied.
                    if let Some(why) = self.tls.as_deref().and_then(|tls| tls.describe(&error)) {
                        log::debug!("etcd at {endpoint}: {call} failed ({why}); trying the next endpoint");
                        failures.push(format!("{endpoint}: {error}"));
                        tls_failure.get_or_insert_with(|| Error::Tls { endpoint: endpoint.clone(), detail: why });
                        continue;
                    }
                    if !(repeatable || not_sent(&error)) {
                        return Err(Error::AnswerLost { endpoint: endpoint.clone(), call, detail: error.to_string() });
                    }
                    log::debug!("etcd at {endpoint}: {call} failed ({error}); trying the next endpoint");
                    failures.push(format!("{endpoint}: {error}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let mut text = String::new();
            if let Err(error) = response.into_body().into_reader().take(ANSWER_LIMIT).read_to_string(&mut text) {
                if !repeatable {
                    return Err(Error::AnswerLost { endpoint: endpoint.clone(), call, detail: error.to_string() });
                }
                failures.push(format!("{endpoint}: {error}"));
                continue;
            }
            self.preferred.store(index, Ordering::Relaxed);
            // The keep-alive stream may hold more than one line; one request
            // gives one, and it is the first.
            let first_line = text.lines().next().unwrap_or("");
            let answer: Value = serde_json::from_str(first_line).map_err(|e| {
                // etcd's own errors are JSON, even its 404s (a lease not
                // found); a plain "Not Found" is a path it does not serve.
                if status == 404 {
                    return protocol(
                        endpoint,
                        call,
                        format!("it has no {path} (HTTP 404) — is it etcd 3.4 or newer, with its v3 JSON gateway?"),
                    );
                }
                let shown: String = text.chars().take(200).collect();
                protocol(endpoint, call, format!("{e} in HTTP {status} answer {shown:?}"))
            })?;
            if !(200..300).contains(&status) {
                return Err(Error::Refused {
                    endpoint: endpoint.clone(),
                    call,
                    status,
                    code: int(&answer, "code"),
                    message: answer.get("message").or(answer.get("error")).and_then(Value::as_str).unwrap_or(first_line).to_string(),
                });
            }
            return Ok((endpoint.clone(), answer));
        }
        // Where TLS failed, the network did not: its remedy is the one to tell.
        Err(tls_failure.unwrap_or(Error::Unreachable { endpoints: self.endpoints.join(","), detail: failures.join("; ") }))
    }
}

/// The HTTP agent for etcd: short timeouts, since a lease renewal that waits
/// longer than its TTL has already failed; statuses read, not raised; TLS
/// with `tls` for `https://` endpoints.
fn agent(answer_within: Duration, tls: Option<&EtcdTls>) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(answer_within.min(Duration::from_secs(2))))
        .timeout_recv_response(Some(answer_within))
        .timeout_recv_body(Some(Duration::from_secs(10)))
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build();
    match tls {
        Some(tls) => {
            let connector = ().chain(TcpConnector::default()).chain(TlsConnector { config: tls.config.clone() });
            Agent::with_parts(config, connector, DefaultResolver::default())
        }
        None => Agent::new_with_config(config),
    }
}

/// Whether `error` happened before the request left: another endpoint may
/// be asked without risk of applying it twice.
fn not_sent(error: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

/// Whether `urls` (as `--etcd` gives them) are `https://` ones, which need
/// [`EtcdTls`]; an error if they are not etcd client URLs at all.
pub(crate) fn wants_tls(urls: &str) -> Result<bool> {
    parse_endpoints(urls).map(|(_, https)| https)
}

/// The endpoints, without a trailing slash, and whether they are `https://`.
fn parse_endpoints(urls: &str) -> Result<(Vec<String>, bool)> {
    let mut endpoints = Vec::new();
    let mut schemes = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let url = url.trim_end_matches('/');
        let (scheme, authority) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(authority), _) => ("http", authority),
            (_, Some(authority)) => ("https", authority),
            (None, None) => {
                return Err(Error::BadUrl(format!(
                    "'{url}' is not an etcd client URL: give http://HOST:PORT (or https://HOST:PORT)"
                )));
            }
        };
        if authority.is_empty() || authority.contains('/') {
            return Err(Error::BadUrl(format!(
                "'{url}' is not an etcd client URL: give http://HOST:PORT (or https://), without a path"
            )));
        }
        if schemes.first().is_some_and(|first| *first != scheme) {
            return Err(Error::BadUrl(format!(
                "--etcd mixes http:// and https:// URLs ({}, {url}): the members of one etcd serve clients alike — \
                 give them all with the scheme of their --advertise-client-urls",
                endpoints[0]
            )));
        }
        schemes.push(scheme);
        endpoints.push(url.to_string());
    }
    if endpoints.is_empty() {
        return Err(Error::BadUrl("--etcd names no endpoint: give http://HOST:PORT[,http://HOST:PORT…]".to_string()));
    }
    Ok((endpoints, schemes[0] == "https"))
}

fn b64(bytes: &[u8]) -> String {
    BASE64_STANDARD.encode(bytes)
}

/// The end of the range of keys that start with `prefix`: the prefix with its
/// last byte that can be raised, raised (etcd's own `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

fn range_body(key: &str, prefix: bool) -> Value {
    let mut body = Map::new();
    body.insert("key".into(), b64(key.as_bytes()).into());
    if prefix {
        body.insert("range_end".into(), b64(&prefix_end(key.as_bytes())).into());
    }
    Value::Object(body)
}

fn put_body(key: &str, value: &[u8], lease: Option<i64>) -> Value {
    let mut body = Map::new();
    body.insert("key".into(), b64(key.as_bytes()).into());
    body.insert("value".into(), b64(value).into());
    if let Some(lease) = lease {
        body.insert("lease".into(), lease.to_string().into());
    }
    Value::Object(body)
}

fn txn_body(txn: &Txn) -> Value {
    let compare: Vec<Value> = txn.compare.iter().map(compare_body).collect();
    let ops = |ops: &[Op]| -> Vec<Value> { ops.iter().map(op_body).collect() };
    json!({ "compare": compare, "success": ops(&txn.success), "failure": ops(&txn.failure) })
}

fn compare_body(compare: &Compare) -> Value {
    let (key, cmp, target, field, operand): (&str, Cmp, &str, &str, Value) = match compare {
        Compare::Version(key, cmp, n) => (key, *cmp, "VERSION", "version", n.to_string().into()),
        Compare::ModRevision(key, cmp, n) => (key, *cmp, "MOD", "mod_revision", n.to_string().into()),
        Compare::CreateRevision(key, cmp, n) => (key, *cmp, "CREATE", "create_revision", n.to_string().into()),
        Compare::Value(key, cmp, value) => (key, *cmp, "VALUE", "value", b64(value).into()),
    };
    let result = match cmp {
        Cmp::Equal => "EQUAL",
        Cmp::NotEqual => "NOT_EQUAL",
        Cmp::Greater => "GREATER",
        Cmp::Less => "LESS",
    };
    let mut body = Map::new();
    body.insert("key".into(), b64(key.as_bytes()).into());
    body.insert("target".into(), target.into());
    body.insert("result".into(), result.into());
    body.insert(field.into(), operand);
    Value::Object(body)
}

fn op_body(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => json!({ "request_put": put_body(key, value, *lease) }),
        Op::Get(key) => json!({ "request_range": range_body(key, false) }),
        Op::Delete(key) => json!({ "request_delete_range": { "key": b64(key.as_bytes()) } }),
    }
}

fn txn_outcome(endpoint: &str, answer: &Value) -> Result<TxnOutcome> {
    let succeeded = answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
    let mut gets = Vec::new();
    for response in answer.get("responses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(range) = field(response, "response_range", "responseRange") {
            gets.push(kvs(endpoint, "transaction", range)?);
        }
    }
    Ok(TxnOutcome { succeeded, gets })
}

/// The `kvs` of a range answer.
fn kvs(endpoint: &str, call: &'static str, answer: &Value) -> Result<Vec<Kv>> {
    let decode = |text: Option<&Value>, what: &str| -> Result<Vec<u8>> {
        let text = text.and_then(Value::as_str).unwrap_or("");
        BASE64_STANDARD.decode(text).map_err(|e| protocol(endpoint, call, format!("{what} is not base64: {e}")))
    };
    let mut found = Vec::new();
    for kv in answer.get("kvs").and_then(Value::as_array).into_iter().flatten() {
        found.push(Kv {
            key: String::from_utf8_lossy(&decode(kv.get("key"), "a key")?).into_owned(),
            value: decode(kv.get("value"), "a value")?,
            create_revision: field(kv, "create_revision", "createRevision").map_or(0, as_int),
            mod_revision: field(kv, "mod_revision", "modRevision").map_or(0, as_int),
            version: int(kv, "version"),
            lease: int(kv, "lease"),
        });
    }
    Ok(found)
}

/// `name` in `object`, as etcd 3.4 names it (proto names) or as other
/// gateways do (lowerCamelCase).
fn field<'a>(object: &'a Value, proto_name: &str, json_name: &str) -> Option<&'a Value> {
    object.get(proto_name).or_else(|| object.get(json_name))
}

/// A 64-bit integer, which the gateway writes as a string; absent is 0.
fn int(object: &Value, name: &str) -> i64 {
    object.get(name).map_or(0, as_int)
}

fn as_int(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().unwrap_or(0),
        other => other.as_i64().unwrap_or(0),
    }
}

fn revision(answer: &Value) -> i64 {
    answer.get("header").map_or(0, |header| int(header, "revision"))
}

/// An error sent inside a stream's answer (`{"error":{"grpc_code":…}}`).
fn stream_error(endpoint: &str, call: &'static str, error: &Value) -> Error {
    Error::Refused {
        endpoint: endpoint.to_string(),
        call,
        status: error.get("http_code").map_or(500, as_int) as u16,
        code: error.get("grpc_code").map_or(0, as_int),
        message: error.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
    }
}

fn protocol(endpoint: &str, call: &'static str, detail: String) -> Error {
    Error::Protocol { endpoint: endpoint.to_string(), call, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_or_https_urls_of_one_scheme_and_https_needs_tls_settings() {
        let etcd = Etcd::connect("http://10.0.0.1:2379, http://10.0.0.2:2379/").unwrap();
        assert_eq!(etcd.endpoints(), ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert!(!wants_tls("http://10.0.0.1:2379").unwrap());
        assert!(wants_tls("https://10.0.0.1:2379,https://etcd-2:2379").unwrap());
        let https = Etcd::connect("https://10.0.0.1:2379").err().unwrap().to_string();
        assert!(https.contains("give --etcd-ca FILE"), "{https}");
        let mixed = wants_tls("https://10.0.0.1:2379,http://10.0.0.2:2379").unwrap_err().to_string();
        assert!(mixed.contains("mixes http:// and https://"), "{mixed}");
        assert!(Etcd::connect("10.0.0.1:2379").err().unwrap().to_string().contains("http://HOST:PORT"));
        assert!(Etcd::connect("http://10.0.0.1:2379/v3").is_err());
        assert!(Etcd::connect("https://").is_err());
        assert!(Etcd::connect(" , ").err().unwrap().to_string().contains("names no endpoint"));
    }

    #[test]
    fn keys_and_values_travel_as_base64_and_a_lease_as_a_string() {
        let body = put_body("/ferry/nodes/a", b"{}", Some(7587888));
        assert_eq!(body, json!({ "key": "L2ZlcnJ5L25vZGVzL2E=", "value": "e30=", "lease": "7587888" }));
        assert_eq!(put_body("k", b"", None), json!({ "key": "aw==", "value": "" }));
    }

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_that_prefix() {
        assert_eq!(prefix_end(b"/ferry/"), b"/ferry0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(range_body("/ferry/", true), json!({ "key": "L2ZlcnJ5Lw==", "range_end": "L2ZlcnJ5MA==" }));
        assert_eq!(range_body("/ferry/", false), json!({ "key": "L2ZlcnJ5Lw==" }));
    }

    #[test]
    fn a_transaction_names_its_targets_and_operands_as_the_gateway_expects() {
        let txn = Txn {
            compare: vec![
                Compare::ModRevision("p".into(), Cmp::Equal, 42),
                Compare::Version("n".into(), Cmp::Greater, 0),
                Compare::CreateRevision("c".into(), Cmp::Equal, 0),
                Compare::Value("v".into(), Cmp::NotEqual, b"x".to_vec()),
                Compare::Version("l".into(), Cmp::Less, 5),
            ],
            success: vec![Op::Put { key: "p".into(), value: b"1".to_vec(), lease: None }],
            failure: vec![Op::Get("p".into()), Op::Delete("d".into())],
        };
        assert_eq!(
            txn_body(&txn),
            json!({
                "compare": [
                    { "key": "cA==", "target": "MOD", "result": "EQUAL", "mod_revision": "42" },
                    { "key": "bg==", "target": "VERSION", "result": "GREATER", "version": "0" },
                    { "key": "Yw==", "target": "CREATE", "result": "EQUAL", "create_revision": "0" },
                    { "key": "dg==", "target": "VALUE", "result": "NOT_EQUAL", "value": "eA==" },
                    { "key": "bA==", "target": "VERSION", "result": "LESS", "version": "5" },
                ],
                "success": [{ "request_put": { "key": "cA==", "value": "MQ==" } }],
                "failure": [{ "request_range": { "key": "cA==" } }, { "request_delete_range": { "key": "ZA==" } }],
            })
        );
    }

    #[test]
    fn answers_are_read_with_string_integers_and_absent_defaults() {
        // etcd 3.4.23's answer to a transaction whose compare failed and
        // whose failure branch read the key: no "succeeded" at all.
        let answer: Value = serde_json::from_str(
            r#"{"header":{"revision":"2"},"responses":[{"response_range":{"header":{"revision":"2"},
            "kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}}]}"#,
        )
        .unwrap();
        let outcome = txn_outcome("http://e", &answer).unwrap();
        assert!(!outcome.succeeded);
        let kv = Kv { key: "foo".into(), value: b"bar".to_vec(), create_revision: 2, mod_revision: 2, version: 1, lease: 0 };
        assert_eq!(outcome.gets, vec![vec![kv]]);
        // Another gateway's camelCase and plain numbers read the same.
        let camel = json!({ "succeeded": true, "responses": [{ "responseRange": { "kvs": [
            { "key": "Zm9v", "modRevision": 9, "createRevision": "3", "version": 4, "lease": "12" }] } }] });
        let outcome = txn_outcome("http://e", &camel).unwrap();
        assert!(outcome.succeeded);
        assert_eq!((outcome.gets[0][0].mod_revision, outcome.gets[0][0].create_revision), (9, 3));
        assert_eq!((outcome.gets[0][0].lease, outcome.gets[0][0].value.len()), (12, 0));
        let broken = json!({ "kvs": [{ "key": "not base64!" }] });
        assert!(kvs("http://e", "range", &broken).unwrap_err().to_string().contains("not base64"));
    }
}
