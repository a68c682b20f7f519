//! The agent's HTTP side: checks the token, routes each request to a handler
//! in `agent/`, and answers errors as `ErrorBody` JSON. What a connection may
//! cost the agent (size, time, count) is bounded in `http.rs`.

use std::io::{self, Read};
use std::thread;
use std::time::Instant;

use serde::Serialize;

use super::agent::{Agent, Handled, WithStatus};
use super::ledger::{valid_client_id, CLIENT_ID_RULE};
use crate::identity::Peer;
use super::http::{self, Method, Request};
use super::{
    authorized, ErrorBody, ABORT, BLOCKS, COMMIT, CONTAINERS, FAILOVERS, FLEET_MIGRATE, HEALTH, IMAGES, INFO, MIGRATIONS, MIGRATION_HEADER,
    RESTORE, SNAPSHOTS, STAGE,
};
use crate::error::{Error, Kind, Result};

/// How often prepared handovers are checked for expiry.
const HANDOVER_TIDY: std::time::Duration = std::time::Duration::from_secs(2);
/// What a refused upload may still send before the agent stops reading it.
const DRAIN_LIMIT: u64 = 64 << 30;

/// Serves until the listener fails. Each connection has its own thread.
/// With `tls` every connection is mutual TLS 1.3; without, plain HTTP.
pub(crate) fn serve(agent: &Agent, listen: &str, tls: Option<std::sync::Arc<super::tls::Acceptor>>) -> Result<()> {
    // Before the port is open: whoever reaches the agent finds no leftovers.
    agent.clean_spool();
    let mut server = http::Server::bind(listen, http::Limits::default())
        .map_err(|e| Error::new(Kind::Usage, format!("cannot listen on {listen}: {e}")))?;
    if let Some(acceptor) = tls {
        server = server.with_tls(acceptor);
    }
    log::info!("agent listening on {listen}, spool {}", agent.settings.spool.display());
    thread::scope(|scope| {
        if let Some(after) = agent.settings.failover_after {
            scope.spawn(move || super::watchdog::watch_for_failover(agent, after));
        }
        if let Some(seat) = &agent.settings.fleet {
            scope.spawn(move || super::fleet::watch_for_failover(agent, seat));
        }
        scope.spawn(|| loop {
            agent.tidy_handovers();
            agent.kept.tidy();
            thread::sleep(HANDOVER_TIDY);
        });
        let error = server.serve(&|request| handle(agent, request));
        log::error!("the listener failed: {error}");
    });
    Ok(())
}

fn handle(agent: &Agent, mut request: Request) {
    let started = Instant::now();
    let method = request.method();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let result = if method == Method::Get && path == HEALTH {
        Ok(Reply::text("ok\n"))
    } else if let Some(token) = &agent.settings.token
        && !authorized(token, header(&request, "Authorization").as_deref())
    {
        Err(Error::new(Kind::Usage, "missing or wrong token — give the agent's token with --token-file").with_status(401))
    } else {
        route(agent, &mut request, &method, path, query)
    };
    let (status, body, content_type) = match result {
        Ok(reply) => (200, reply.body, reply.content_type),
        Err(error) => {
            let status = error.status;
            // Read what a token holder is still sending, so that it gets this
            // answer instead of a broken pipe; a stranger's body is never read:
            // answering before it closes the connection.
            let limit = if status == 401 { 0 } else { DRAIN_LIMIT };
            let _ = io::copy(&mut request.as_reader().take(limit), &mut io::sink());
            log::warn!("{method} {path}: {}", error.error);
            let remedy = match (error.error.kind, status) {
                (Kind::BaseMissing, _) => Some(super::REMEDY_WHOLE.to_string()),
                (_, 503) => Some(super::REMEDY_RETRY.to_string()),
                _ => None,
            };
            let body = ErrorBody { error: error.error.message, exit_code: error.error.kind.exit_code(), remedy };
            (status, serde_json::to_string(&body).unwrap_or_default(), "application/json")
        }
    };
    log::info!("{method} {path} → {status} in {:.3}s", started.elapsed().as_secs_f64());
    if let Err(e) = request.respond(status, content_type, body.as_bytes()) {
        log::warn!("could not answer {method} {path}: {e}");
    }
}

/// An authorized request → its handler. Over TLS, each handler is told the
/// calling peer: payloads must carry its signature, and it may remove, commit
/// or abort only what it sent (migration ids are scoped to it).
fn route(agent: &Agent, request: &mut Request, method: &Method, path: &str, query: &str) -> Handled<Reply> {
    let declared = request.body_length();
    let caller = request.peer().cloned();
    let caller = caller.as_ref();
    match (method, path) {
        (Method::Get, INFO) => agent.info().map(Reply::json),
        (Method::Post, IMAGES) => agent.load_image(request.as_reader()).map(Reply::json),
        (Method::Post, RESTORE) => {
            let migration = header(request, MIGRATION_HEADER).map(|id| scoped(&id, caller)).transpose()?;
            let name = query_value(query, "name");
            let prepare_only = query_value(query, "prepare").as_deref() == Some("1");
            agent.restore(request.as_reader(), declared, name.as_deref(), migration.as_deref(), prepare_only, caller).map(Reply::json)
        }
        (Method::Post, p) if p.starts_with(MIGRATIONS) && p.ends_with(COMMIT) => {
            agent.commit(&scoped(&p[MIGRATIONS.len()..p.len() - COMMIT.len()], caller)?, caller).map(Reply::json)
        }
        (Method::Post, p) if p.starts_with(MIGRATIONS) && p.ends_with(ABORT) => {
            agent.abort(&scoped(&p[MIGRATIONS.len()..p.len() - ABORT.len()], caller)?).map(Reply::json)
        }
        (Method::Get, p) if p.starts_with(MIGRATIONS) => agent.outcome(&scoped(&p[MIGRATIONS.len()..], caller)?).map(Reply::json),
        (Method::Post, SNAPSHOTS) => {
            let keep = query_value(query, "keep");
            agent.receive_snapshot(request.as_reader(), declared, keep.as_deref(), caller).map(Reply::json)
        }
        (Method::Get, SNAPSHOTS) => Ok(Reply::json(agent.store.list())),
        (Method::Get, BLOCKS) => {
            let name = query_value(query, "name").unwrap_or_default();
            agent.blocks(&name, caller).map(Reply::json)
        }
        (Method::Post, STAGE) => agent.stage(request.as_reader(), declared, caller).map(Reply::json),
        (Method::Post, FLEET_MIGRATE) => {
            let name = query_value(query, "name").unwrap_or_default();
            let to = query_value(query, "to").unwrap_or_default();
            let generation = query_value(query, "generation").and_then(|g| g.parse().ok()).ok_or_else(|| {
                Error::new(Kind::Usage, "give the placement's generation as it was read: ?generation=N")
            })?;
            agent.fleet_migrate(&name, &to, generation).map(Reply::json)
        }
        (Method::Get, FAILOVERS) => Ok(Reply::json(agent.failovers())),
        (Method::Delete, p) if p.starts_with(CONTAINERS) => agent.remove_restored(&p[CONTAINERS.len()..], caller).map(Reply::json),
        _ => Err(Error::new(Kind::NotFound, format!("no such endpoint: {method} {path}")).with_status(404)),
    }
}

/// A client's migration id as the ledger keeps it: over TLS, prefixed with
/// the caller's fingerprint, so one peer can neither see, commit nor abort
/// another's migration.
fn scoped(id: &str, caller: Option<&Peer>) -> Handled<String> {
    if !valid_client_id(id) {
        return Err(Error::new(Kind::Usage, CLIENT_ID_RULE).into());
    }
    Ok(match caller {
        Some(peer) => format!("{}-{id}", peer.fingerprint.hex()),
        None => id.to_string(),
    })
}

struct Reply {
    body: String,
    content_type: &'static str,
}

impl Reply {
    fn text(body: &str) -> Reply {
        Reply { body: body.to_string(), content_type: "text/plain" }
    }

    fn json(value: impl Serialize) -> Reply {
        Reply { body: serde_json::to_string(&value).unwrap_or_default(), content_type: "application/json" }
    }
}

fn header(request: &Request, name: &'static str) -> Option<String> {
    request.header(name).map(str::to_string)
}

/// The value of `key` in a query string of plain (unencoded) names.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}
