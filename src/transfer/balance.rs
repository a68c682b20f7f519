//! `ferry balance`: every round, if this process is the fleet's one
//! balancer (`fleet/leader.rs`), read the fleet, plan at most one move
//! (`fleet/plan.rs`) and ask the source node's agent to make it
//! (`POST /v1/fleet/migrate`). The agent records the move in etcd by a
//! compare-and-swap on the placement's generation, so a plan made from a
//! state that changed since is refused there, not carried out twice.
//!
//! Every move tried is one JSON line in the log file and the container's
//! record at `/ferry/migrations/<container>` (`fleet/moves.rs`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{Link, Peer};
use super::FleetMove;
use crate::error::{io_error, Error, Kind, Result};
use crate::fleet::etcd::Etcd;
use crate::fleet::leader::{Balancer, Campaign, Leadership};
use crate::fleet::moves::{self, LastMove, Made};
use crate::fleet::plan::{self, Move, Policy};

/// How long a source's agent may take to answer a move: it answers only
/// once the container runs on the target, and a migration of a few hundred
/// MiB over an emulated slow link takes minutes.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a wait looks at the stop counter.
const TICK: Duration = Duration::from_millis(100);

pub(crate) struct Options<'a> {
    pub etcd: Etcd,
    pub policy: Policy,
    pub every: Duration,
    /// The balancer lease's TTL: how long a dead balancer keeps the others
    /// from taking over.
    pub lease_ttl_secs: i64,
    pub link: &'a Link,
    /// The JSON-lines log of every move tried.
    pub log: &'a Path,
    /// One round, then return: its move's error, if it failed.
    pub once: bool,
    /// Stop after this many rounds.
    pub rounds: Option<u64>,
}

/// Balances until `stop` counts a signal (or the rounds are done), calling
/// `report` with every move tried. A second signal while a move runs leaves
/// without its answer (the source's agent finishes it either way).
/// Resigns the leadership before returning.
pub(crate) fn balance(options: Options, stop: &AtomicUsize, report: &mut dyn FnMut(&LastMove)) -> Result<()> {
    let log = open_log(options.log)?;
    let who = format!("{} (pid {})", crate::host::hostname(), std::process::id());
    let mut balancer = Rounds { options, who, log, lead: None, renewed: Instant::now(), follower_of: None };
    let result = balancer.run(stop, report);
    if let Some(lead) = balancer.lead.take() {
        lead.resign();
    }
    result
}

/// What one round did.
enum Round {
    /// Another balancer leads.
    Follower,
    /// This one leads, and there is nothing to move.
    Still,
    /// A move was tried: its record, and its error when it failed.
    Tried(Box<LastMove>, Option<Error>),
}

struct Rounds<'a> {
    options: Options<'a>,
    who: String,
    log: File,
    lead: Option<Leadership>,
    /// When the lease was last renewed.
    renewed: Instant,
    /// Who led when this one last lost a campaign: logged when it changes.
    follower_of: Option<Option<Balancer>>,
}

impl Rounds<'_> {
    fn run(&mut self, stop: &AtomicUsize, report: &mut dyn FnMut(&LastMove)) -> Result<()> {
        let mut done = 0u64;
        while stop.load(Ordering::SeqCst) == 0 {
            let started = Instant::now();
            let round = self.round(stop);
            done += 1;
            match round {
                Ok(Round::Tried(record, error)) => {
                    report(&record);
                    match error {
                        Some(error) if self.options.once => return Err(error),
                        Some(error) => log::warn!("{error} — the next round goes on"),
                        None => {}
                    }
                }
                Ok(Round::Still) if self.options.once => log::info!("nothing to move (policy {})", self.options.policy),
                Ok(Round::Still) => log::debug!("nothing to move (policy {})", self.options.policy),
                Ok(Round::Follower) if self.options.once => return Err(self.not_leader()),
                Ok(Round::Follower) => {}
                Err(error) if self.options.once => return Err(error),
                Err(error) => {
                    log::warn!("balancing round failed: {error} — trying again in {:?}", self.options.every)
                }
            }
            if self.options.once || self.options.rounds.is_some_and(|rounds| done >= rounds) {
                break;
            }
            self.wait_until(started + self.options.every, stop);
        }
        Ok(())
    }

    /// Leads (renewing, or campaigning when not leading), plans, and tries
    /// the one move planned.
    fn round(&mut self, stop: &AtomicUsize) -> Result<Round> {
        self.renew()?;
        if self.lead.is_none() && !self.campaign()? {
            return Ok(Round::Follower);
        }
        let etcd = &self.options.etcd;
        let status = crate::fleet::status(etcd)?;
        let last_moved: BTreeMap<String, u64> = status.last_moves.iter().map(|last| (last.container.clone(), last.unix_ms)).collect();
        let Some(planned) = plan::plan(self.options.policy, &status, &last_moved) else {
            return Ok(Round::Still);
        };
        log::info!(
            "moving {} ({} MiB) from {} to {} (policy {}, generation {})",
            planned.container,
            planned.memory_mib,
            planned.from,
            planned.to,
            self.options.policy,
            planned.generation
        );
        let Some(answer) = self.carry_out(&planned, stop) else {
            return Err(Error::new(
                Kind::OutcomeUnknown,
                format!(
                    "left before {}'s agent answered the move of {} to {}: it finishes the move either way — see \
                     `ferry fleet status` for where the container runs",
                    planned.from, planned.container, planned.to
                ),
            ));
        };
        let record = record_of(&planned, &answer);
        self.write_log(&record);
        if let Err(error) = moves::record(&self.options.etcd, &record) {
            log::warn!("cannot record the move of {} in etcd: {error}", record.container);
        }
        Ok(Round::Tried(Box::new(record), answer.err()))
    }

    /// Tries once to lead; true if this process now does.
    fn campaign(&mut self) -> Result<bool> {
        match Leadership::campaign(&self.options.etcd, &self.who, self.options.lease_ttl_secs)? {
            Campaign::Won(lead) => {
                self.lead = Some(lead);
                self.renewed = Instant::now();
                self.follower_of = None;
                Ok(true)
            }
            Campaign::Lost { holder } => {
                if self.follower_of.as_ref() != Some(&holder) {
                    let by = holder.as_ref().map_or("another balancer".to_string(), |h| h.who.clone());
                    log::info!("{by} balances the fleet: {} waits, and tries again every round", self.who);
                    self.follower_of = Some(holder);
                }
                Ok(false)
            }
        }
    }

    /// Renews the lease, if one is held; forgets it once it is gone, so that
    /// nothing more is planned before a campaign is won again.
    fn renew(&mut self) -> Result<()> {
        let Some(lead) = &self.lead else { return Ok(()) };
        let held = lead.still_leader()?;
        self.renewed = Instant::now();
        if !held {
            log::warn!("{} is no longer the fleet's balancer (its lease is gone): it plans nothing until it leads again", self.who);
            self.lead = None;
        }
        Ok(())
    }

    /// Renews the lease if a third of its TTL went since the last renewal.
    fn renew_when_due(&mut self) {
        let Some(ttl) = self.lead.as_ref().map(Leadership::ttl_secs) else { return };
        if self.renewed.elapsed() < Duration::from_millis(ttl as u64 * 1000 / 3) {
            return;
        }
        if let Err(error) = self.renew() {
            log::warn!("{}: cannot renew the balancer's lease: {error}", self.who);
        }
    }

    /// Asks the source's agent for the move from a thread of its own, so
    /// that the lease is renewed while it runs; None when a second signal
    /// came first.
    fn carry_out(&mut self, planned: &Move, stop: &AtomicUsize) -> Option<Result<FleetMove>> {
        let peer = Peer::new(&planned.agent, self.options.link, MOVE_TIMEOUT);
        let (container, to, generation) = (planned.container.clone(), planned.to.clone(), planned.generation);
        let asked = thread::Builder::new()
            .name("fleet-move".to_string())
            .spawn(move || peer.fleet_migrate(&container, &to, generation));
        let asked = match asked {
            Ok(asked) => asked,
            Err(e) => return Some(Err(Error::new(Kind::Failure, format!("cannot start a thread for the move: {e}")))),
        };
        let mut warned = false;
        while !asked.is_finished() {
            match stop.load(Ordering::SeqCst) {
                0 => {}
                1 if !warned => {
                    log::warn!("stopping once {}'s agent answers the move of {} — signal again to leave now", planned.from, planned.container);
                    warned = true;
                }
                1 => {}
                _ => return None,
            }
            thread::sleep(TICK);
            self.renew_when_due();
        }
        Some(asked.join().unwrap_or_else(|_| Err(Error::new(Kind::Failure, "the thread asking for the move panicked"))))
    }

    fn wait_until(&mut self, deadline: Instant, stop: &AtomicUsize) {
        while stop.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            thread::sleep(TICK.min(deadline - Instant::now()));
            self.renew_when_due();
        }
    }

    fn write_log(&mut self, record: &LastMove) {
        let written = serde_json::to_string(record)
            .map_err(std::io::Error::other)
            .and_then(|line| self.log.write_all(format!("{line}\n").as_bytes()))
            .and_then(|()| self.log.flush());
        if let Err(error) = written {
            log::warn!("cannot append the move of {} to {}: {error}", record.container, self.options.log.display());
        }
    }

    fn not_leader(&self) -> Error {
        let by = match &self.follower_of {
            Some(Some(holder)) => format!("{} (since unix time {})", holder.who, holder.since_unix),
            _ => "another balancer".to_string(),
        };
        Error::new(
            Kind::Refused,
            format!(
                "{by} balances the fleet, so --once planned nothing — stop that balancer, or wait for its lease to \
                 expire (at most --lease-ttl seconds after it stopped)"
            ),
        )
    }
}

/// The log line and etcd record of a move tried.
fn record_of(planned: &Move, answer: &Result<FleetMove>) -> LastMove {
    let mut record = LastMove {
        unix_ms: unix_ms(),
        ok: answer.is_ok(),
        container: planned.container.clone(),
        from: planned.from.clone(),
        to: planned.to.clone(),
        made: None,
        error: None,
        failover: false,
    };
    match answer {
        Ok(moved) => {
            record.made = Some(Made {
                generation: moved.generation,
                save_secs: moved.save_secs,
                transfer_secs: moved.transfer_secs,
                resume_secs: moved.resume_secs,
                commit_secs: moved.commit_secs,
                downtime_secs: moved.downtime_secs,
                elapsed_secs: moved.elapsed_secs,
                bytes_sent: moved.bytes_sent,
            })
        }
        Err(error) => record.error = Some(error.to_string()),
    }
    record
}

/// Opens the log for appending, readable by its owner only (it names the
/// fleet's nodes and containers), creating its folder if needed.
fn open_log(path: &Path) -> Result<File> {
    let cannot = |e| io_error(format!("cannot open the balancer's log {} — give another file with --log", path.display()), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(cannot)?;
    }
    OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(cannot)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::fleet::leader::BALANCER;
    use crate::fleet::membership::Membership;
    use crate::fleet::testing::LocalEtcd;
    use crate::fleet::{placement, Hosted, Node};
    use crate::testing::TempDir;

    /// An agent that answers one request with `status` and `body`, and
    /// hands back the request line it got.
    fn agent_answering(status: &str, body: String) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let status = status.to_string();
        let served = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut header = String::new();
            let (mut body_length, mut chunked) = (0, false);
            while reader.read_line(&mut header).unwrap() > 2 {
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        body_length = value.trim().parse().unwrap();
                    }
                    chunked |= name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked";
                }
                header.clear();
            }
            // Read what the client sent in full (an empty body may still come
            // as a last chunk): a socket closed with unread bytes is reset,
            // and the client may see the reset before the answer.
            if chunked {
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
            } else {
                std::io::copy(&mut reader.by_ref().take(body_length), &mut std::io::sink()).unwrap();
            }
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            request_line.trim_end().to_string()
        });
        (addr, served)
    }

    fn join(etcd: &Etcd, name: &str, agent: &str, containers: &[(&str, u64)]) -> Membership {
        let node = Node {
            name: name.to_string(),
            agent: agent.to_string(),
            arch: "aarch64".to_string(),
            mem_available_mib: 100,
            board: None,
            containers: containers.iter().map(|(c, mib)| Hosted { name: c.to_string(), memory_mib: *mib }).collect(),
            snapshots: Vec::new(),
            ferry_version: "0.1.0".to_string(),
        };
        Membership::join(etcd.clone(), node, 60).unwrap()
    }

    fn once<'a>(etcd: &Etcd, link: &'a Link, log: &'a Path) -> Options<'a> {
        Options {
            etcd: etcd.clone(),
            policy: Policy::Rotate,
            every: Duration::from_secs(1),
            lease_ttl_secs: 10,
            link,
            log,
            once: true,
            rounds: None,
        }
    }

    #[test]
    #[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
    fn a_round_asks_the_source_agent_logs_the_move_records_it_and_resigns() {
        let local = LocalEtcd::start("balance-moved");
        let etcd = Etcd::connect(&local.url).unwrap();
        let answer = FleetMove {
            container: "web".into(),
            from: "a".into(),
            to: "b".into(),
            generation: 2,
            downtime_secs: 1.5,
            bytes_sent: 2 << 20,
            ..FleetMove::default()
        };
        let (addr, served) = agent_answering("200 OK", serde_json::to_string(&answer).unwrap());
        let _a = join(&etcd, "a", &addr, &[("web", 10)]);
        let _b = join(&etcd, "b", "127.0.0.1:1", &[]);
        placement::claim(&etcd, "web", "a").unwrap();
        let dir = TempDir::new("balance-moved");
        let log = dir.path().join("moves.jsonl");
        let (link, stop) = (Link::default(), AtomicUsize::new(0));
        let mut reported = Vec::new();
        balance(once(&etcd, &link, &log), &stop, &mut |record| reported.push(record.clone())).unwrap();

        assert_eq!(served.join().unwrap(), "POST /v1/fleet/migrate?name=web&to=b&generation=1 HTTP/1.1");
        assert_eq!(reported.len(), 1);
        let record = &reported[0];
        assert!(record.ok && record.error.is_none(), "{record:?}");
        assert_eq!((record.from.as_str(), record.to.as_str()), ("a", "b"));
        let made = record.made.as_ref().unwrap();
        assert_eq!((made.generation, made.downtime_secs, made.bytes_sent), (2, 1.5, 2 << 20));
        let lines = fs::read_to_string(&log).unwrap();
        assert_eq!(lines, format!("{}\n", serde_json::to_string(record).unwrap()));
        assert_eq!(fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(crate::fleet::status(&etcd).unwrap().last_moves, reported);
        assert!(etcd.get(BALANCER).unwrap().is_none(), "the balancer resigns when it exits");
    }

    #[test]
    #[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
    fn a_refused_move_is_logged_as_failed_and_once_exits_with_its_error() {
        let local = LocalEtcd::start("balance-refused");
        let etcd = Etcd::connect(&local.url).unwrap();
        let refusal = r#"{"error":"container 'web' is busy","exit_code":9}"#.to_string();
        let (addr, served) = agent_answering("409 Conflict", refusal);
        let _a = join(&etcd, "a", &addr, &[("web", 10)]);
        let _b = join(&etcd, "b", "127.0.0.1:1", &[]);
        placement::claim(&etcd, "web", "a").unwrap();
        let dir = TempDir::new("balance-refused");
        let log = dir.path().join("moves.jsonl");
        let (link, stop) = (Link::default(), AtomicUsize::new(0));
        let mut reported = Vec::new();
        let error = balance(once(&etcd, &link, &log), &stop, &mut |record| reported.push(record.clone())).unwrap_err();
        served.join().unwrap();
        assert_eq!(error.kind, Kind::Peer);
        assert!(error.to_string().contains("is busy"), "{error}");
        let line: serde_json::Value = serde_json::from_str(fs::read_to_string(&log).unwrap().trim_end()).unwrap();
        assert_eq!(line["ok"], false);
        assert_eq!((line["container"].as_str(), line["to"].as_str()), (Some("web"), Some("b")));
        assert!(line["error"].as_str().unwrap().contains("is busy") && line.get("generation").is_none(), "{line}");
        assert_eq!(crate::fleet::status(&etcd).unwrap().last_moves, reported);

        // While another balancer leads, --once plans nothing and says who leads.
        let Campaign::Won(other) = Leadership::campaign(&etcd, "other", 30).unwrap() else { panic!("no leader yet") };
        let refused = balance(once(&etcd, &link, &log), &stop, &mut |_| panic!("a follower moved")).unwrap_err();
        assert_eq!(refused.kind, Kind::Refused);
        assert!(refused.to_string().contains("other"), "{refused}");
        other.resign();
    }
}
