//! The client side of the peer protocol: one typed call per route.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use ureq::http::Response;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, TcpConnector};
use ureq::{Agent, Body, SendBody};

use super::{
    BlockOffer, ErrorBody, Failover, Outcome, PeerInfo, RestoreReport, SnapshotInfo, StageReport, ABORT, BLOCKS, COMMIT, CONTAINERS,
    FAILOVERS, IMAGES, INFO, STAGE,
    MIGRATIONS, MIGRATION_HEADER, RESTORE, SNAPSHOTS,
};
use super::tls::connector::{self, TlsConnector};
use crate::error::{Error, Kind, Result};
use crate::identity::Identity;
use crate::payload;

/// How this host reaches its peers: the same for every peer of one command.
#[derive(Clone, Default)]
pub(crate) struct Link {
    /// The shared token, sent as a bearer token (a second factor over TLS).
    pub token: Option<String>,
    /// This host's key: payloads sent to peers are signed with it.
    pub signer: Option<Arc<Identity>>,
    /// Mutual TLS with this config (`https://`), or plain HTTP when None.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A ferry agent on another host.
pub(crate) struct Peer {
    addr: String,
    link: Link,
    timeout: Duration,
    agent: Agent,
}

impl Peer {
    /// `timeout` bounds how long one answer may take to start coming back.
    /// With the link's TLS config every call is made over TLS 1.3 with this
    /// host's certificate, to an agent the config's verifier trusts.
    pub(crate) fn new(addr: &str, link: &Link, timeout: Duration) -> Peer {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(timeout))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = match &link.tls {
            Some(tls) => {
                let connector = ().chain(TcpConnector::default()).chain(TlsConnector { config: tls.clone() });
                Agent::with_parts(config, connector, DefaultResolver::default())
            }
            None => Agent::new_with_config(config),
        };
        Peer { addr: addr.to_string(), link: link.clone(), timeout, agent }
    }

    /// What signs the payloads sent to this peer, if anything.
    pub(crate) fn signer(&self) -> Option<&dyn payload::Sign> {
        self.link.signer.as_deref().map(|s| s as &dyn payload::Sign)
    }

    /// The same peer, for short questions that must not wait long (status,
    /// abort): five seconds per answer.
    pub(crate) fn quick(&self) -> Peer {
        Peer::new(&self.addr, &self.link, Duration::from_secs(5).min(self.timeout))
    }

    /// How long one answer may take to start coming back.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.link.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// An upload: the agent reads no body before it has accepted the request
    /// (token, lock, size), and answers a refusal by closing. Asking for
    /// `100 Continue` first lets this side read that refusal instead of
    /// failing on a broken pipe halfway through the body.
    fn upload(&self, path: &str) -> ureq::http::request::Builder {
        self.request("POST", path).header("Expect", "100-continue")
    }

    fn request(&self, method: &str, path: &str) -> ureq::http::request::Builder {
        let mut builder = ureq::http::Request::builder().method(method).uri(self.url(path));
        if let Some(token) = &self.link.token {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        builder
    }

    fn run(&self, what: &str, request: ureq::http::Request<impl ureq::AsSendBody>) -> Result<Response<Body>> {
        let response = self.agent.run(request).map_err(|e| self.transport_error(what, e))?;
        self.checked(what, response)
    }

    /// The response if it is a success, else the agent's error.
    fn checked(&self, what: &str, response: Response<Body>) -> Result<Response<Body>> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let mut text = String::new();
        let _ = response.into_body().into_reader().take(64 * 1024).read_to_string(&mut text);
        let (reason, remedy) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error, body.remedy),
            Err(_) => (text, None),
        };
        let kind = match remedy.as_deref() {
            Some(super::REMEDY_WHOLE) => Kind::BaseMissing,
            Some(super::REMEDY_RETRY) => Kind::Disconnected,
            _ => Kind::Peer,
        };
        let hint = if status == 401 { " — give the agent's token with --token-file" } else { "" };
        Err(Error::new(kind, format!("the agent at {} refused {what} (HTTP {status}): {reason}{hint}", self.addr)))
    }

    fn transport_error(&self, what: &str, error: ureq::Error) -> Error {
        if let Some(why) = connector::describe(&error) {
            return Error::new(Kind::Peer, format!("{what} failed: the agent at {} {why}", self.addr));
        }
        let detail = match &error {
            // A TLS agent's alert read as an HTTP answer.
            ureq::Error::Protocol(_) if self.link.tls.is_none() => format!("{error} — does the agent require TLS?"),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused — is `ferry serve` running there?".to_string()
            }
            ureq::Error::Timeout(_) => "no answer in time".to_string(),
            other => other.to_string(),
        };
        // The request may or may not have reached the agent: a caller that
        // can repeat it safely (a new migration id, an idempotent question) may.
        // A refused connection is no flaky link: no agent listens there.
        let kind = match &error {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Kind::Peer,
            ureq::Error::Io(_) | ureq::Error::Timeout(_) => Kind::Disconnected,
            _ => Kind::Peer,
        };
        Error::new(kind, format!("{what} with the agent at {} failed: {detail}", self.addr))
    }

    fn json<T: DeserializeOwned>(&self, what: &str, response: Response<Body>) -> Result<T> {
        serde_json::from_reader(response.into_body().into_reader())
            .map_err(|e| Error::new(Kind::Peer, format!("the agent at {} answered {what} with something unexpected: {e}", self.addr)))
    }

    pub(crate) fn info(&self) -> Result<PeerInfo> {
        let request = self.request("GET", INFO).body(()).map_err(http_error)?;
        let response = self.run("the info request", request)?;
        self.json("the info request", response)
    }

    /// Streams a `docker save` tar to the agent, which loads it.
    pub(crate) fn load_image(&self, image: &mut dyn Read) -> Result<()> {
        let request = self.upload(IMAGES).body(SendBody::from_reader(image)).map_err(http_error)?;
        let response = self.run("the image upload", request)?;
        let _ = std::io::copy(&mut response.into_body().into_reader(), &mut std::io::sink());
        Ok(())
    }

    /// Streams a payload to the agent, which prepares it (the app does not
    /// run there until [`Peer::commit`]), and waits for its report.
    pub(crate) fn prepare(&self, payload: &mut dyn Read, name: &str, migration: &str) -> Result<RestoreReport> {
        let request = self
            .upload(&format!("{RESTORE}?name={name}&prepare=1"))
            .header(MIGRATION_HEADER, migration)
            .header("Content-Type", "application/x-ferry-payload")
            .body(SendBody::from_reader(payload))
            .map_err(http_error)?;
        let response = self.run("the transfer", request)?;
        self.json("the transfer", response)
    }

    /// Asks the agent to start the container it prepared for `migration`.
    pub(crate) fn commit(&self, migration: &str) -> Result<RestoreReport> {
        // An explicit empty body (Content-Length: 0): a POST without one is not
        // read the same way by every HTTP/1.1 server.
        let request = self.request("POST", &format!("{MIGRATIONS}{migration}{COMMIT}")).body("").map_err(http_error)?;
        let response = self.run("the commit", request)?;
        self.json("the commit", response)
    }

    /// Asks the agent to give `migration` up; answers what it then is
    /// (`restored` when the commit came first).
    pub(crate) fn abort(&self, migration: &str) -> Result<Outcome> {
        let request = self.request("POST", &format!("{MIGRATIONS}{migration}{ABORT}")).body("").map_err(http_error)?;
        let response = self.run("the abort", request)?;
        self.json("the abort", response)
    }

    /// Streams one snapshot to the agent, which stores it and keeps the newest `keep`.
    pub(crate) fn send_snapshot(&self, payload: &mut dyn Read, keep: usize) -> Result<SnapshotInfo> {
        let request = self
            .upload(&format!("{SNAPSHOTS}?keep={keep}"))
            .header("Content-Type", "application/x-ferry-payload")
            .body(SendBody::from_reader(payload))
            .map_err(http_error)?;
        let response = self.run("the snapshot", request)?;
        self.json("the snapshot", response)
    }

    pub(crate) fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let request = self.request("GET", SNAPSHOTS).body(()).map_err(http_error)?;
        let response = self.run("the snapshot list", request)?;
        self.json("the snapshot list", response)
    }

    pub(crate) fn failovers(&self) -> Result<Vec<Failover>> {
        let request = self.request("GET", FAILOVERS).body(()).map_err(http_error)?;
        let response = self.run("the failover list", request)?;
        self.json("the failover list", response)
    }

    /// Removes a container the agent restored.
    pub(crate) fn remove_container(&self, name: &str) -> Result<()> {
        let request = self.request("DELETE", &format!("{CONTAINERS}{name}")).body(()).map_err(http_error)?;
        let response = self.run("the removal", request)?;
        let _ = std::io::copy(&mut response.into_body().into_reader(), &mut std::io::sink());
        Ok(())
    }

    /// The blocks the agent holds of `container` from this host, for the
    /// next payload to be a delta against: `None` when it holds none, or is
    /// an older agent that takes no deltas.
    pub(crate) fn blocks(&self, container: &str) -> Result<Option<(payload::delta::Offer, String)>> {
        let request = self.request("GET", &format!("{BLOCKS}?name={container}")).body(()).map_err(http_error)?;
        let response = self.agent.run(request).map_err(|e| self.transport_error("the block request", e))?;
        if response.status().as_u16() == 404 {
            return Ok(None);
        }
        let response = self.checked("the block request", response)?;
        let offer: BlockOffer = self.json("the block request", response)?;
        if offer.blocks == 0 {
            return Ok(None);
        }
        use base64::Engine as _;
        let ids = base64::engine::general_purpose::STANDARD.decode(offer.ids.as_bytes()).ok();
        match ids.and_then(|ids| payload::delta::Offer::from_bytes(offer.block_size, &ids)) {
            Some(parsed) => Ok(Some((parsed, offer.base))),
            None => Err(Error::new(Kind::Peer, format!("the agent at {} offered blocks ferry cannot read", self.addr))),
        }
    }

    /// Streams a pre-copy round to the agent, which keeps it as the base of
    /// the next delta.
    pub(crate) fn stage(&self, payload: &mut dyn Read) -> Result<StageReport> {
        let request = self
            .upload(STAGE)
            .header("Content-Type", "application/x-ferry-payload")
            .body(SendBody::from_reader(payload))
            .map_err(http_error)?;
        let response = self.run("the pre-copy round", request)?;
        self.json("the pre-copy round", response)
    }

    /// Asks this (fleet) agent to migrate `container` to fleet node `to`,
    /// provided its placement is still `generation` on that agent's node;
    /// answers once the container runs on `to` or the move failed.
    pub(crate) fn fleet_migrate(&self, container: &str, to: &str, generation: u64) -> Result<super::FleetMove> {
        let path = format!("{}?name={container}&to={to}&generation={generation}", super::FLEET_MIGRATE);
        let request = self.request("POST", &path).body(()).map_err(http_error)?;
        let response = self.run(&format!("migrating {container} to {to}"), request)?;
        self.json(&format!("migrating {container} to {to}"), response)
    }

    /// Whether the agent answers its health check within a short time.
    pub(crate) fn healthy(&self) -> bool {
        let Ok(request) = ureq::http::Request::get(self.url(super::HEALTH)).body(()) else {
            return false;
        };
        let config = self.agent.configure_request(request).timeout_global(Some(Duration::from_secs(3))).build();
        self.agent.run(config).is_ok_and(|r| r.status().is_success())
    }

    /// Asks what became of a migration whose answer was lost: `None` when
    /// the agent knows no such migration.
    pub(crate) fn outcome(&self, migration: &str) -> Result<Option<Outcome>> {
        let request = self.request("GET", &format!("{MIGRATIONS}{migration}")).body(()).map_err(http_error)?;
        let response = self.agent.run(request).map_err(|e| self.transport_error("the status request", e))?;
        if response.status().as_u16() == 404 {
            return Ok(None);
        }
        let response = self.checked("the status request", response)?;
        self.json("the status request", response).map(Some)
    }
}

fn http_error(error: ureq::http::Error) -> Error {
    Error::new(Kind::Failure, format!("cannot build the request: {error}"))
}
