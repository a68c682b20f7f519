//! The error every command returns, and the exit code each kind maps to.
//!
//! The codes are part of ferry's interface (init and field-test scripts branch
//! on them) and are documented in the README. Never renumber one.

use std::fmt;

use crate::fleet::etcd;
use crate::{engine, payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Anything not covered below.
    Failure,
    /// Bad command line or bad option value.
    Usage,
    /// The Docker engine cannot be reached or is unusable (API too old, not experimental).
    Docker,
    /// A container, image, file or snapshot that was named does not exist.
    NotFound,
    /// CRIU failed to checkpoint or restore.
    Criu,
    /// A payload is corrupt, truncated, unsafe, or for another format or architecture.
    BadPayload,
    /// Reading or writing a file, pipe or disk failed.
    Io,
    /// ferry refuses the request: the container cannot be carried, or is in the wrong state.
    Refused,
    /// The peer agent could not be reached, refused the request, or failed.
    Peer,
    /// A migration was committed but the peer's answer was lost: the app is
    /// stopped here, its checkpoint kept, until `ferry recover` settles it.
    OutcomeUnknown,
    /// The connection to the peer broke, no answer came in time, or the peer
    /// was busy: the same request may be tried again (exit code of `Peer`).
    Disconnected,
    /// The peer lacks the blocks a delta refers to: send the whole payload
    /// (exit code of `Peer`).
    BaseMissing,
}

impl Kind {
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Kind::Failure => 1,
            Kind::Usage => 2,
            Kind::Docker => 3,
            Kind::NotFound => 4,
            Kind::Criu => 5,
            Kind::BadPayload => 6,
            Kind::Io => 7,
            Kind::Refused => 8,
            Kind::Peer | Kind::Disconnected | Kind::BaseMissing => 9,
            Kind::OutcomeUnknown => 10,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) kind: Kind,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    /// Says what ferry was doing when `self` happened, keeping its kind.
    pub(crate) fn context(self, doing: impl fmt::Display) -> Error {
        Error { kind: self.kind, message: format!("{doing}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub(crate) type Result<T> = std::result::Result<T, Error>;

impl From<engine::Error> for Error {
    fn from(error: engine::Error) -> Error {
        let kind = match &error {
            engine::Error::Unreachable { .. } | engine::Error::TooOld { .. } => Kind::Docker,
            engine::Error::Api { status: 404, .. } => Kind::NotFound,
            engine::Error::Api { status: 409, .. } => Kind::Refused,
            engine::Error::Io { .. } => Kind::Io,
            engine::Error::Api { .. } | engine::Error::Protocol { .. } => Kind::Failure,
        };
        Error::new(kind, error.to_string())
    }
}

impl From<payload::Error> for Error {
    fn from(error: payload::Error) -> Error {
        let kind = match &error {
            payload::Error::Io { .. } => Kind::Io,
            payload::Error::BaseMissing(_) => Kind::BaseMissing,
            _ => Kind::BadPayload,
        };
        Error::new(kind, error.to_string())
    }
}

impl From<etcd::Error> for Error {
    fn from(error: etcd::Error) -> Error {
        let kind = match &error {
            etcd::Error::BadUrl(_) => Kind::Usage,
            // Nothing was applied, or it may have been: either way asking
            // again (after reading again) is the remedy.
            etcd::Error::Unreachable { .. } | etcd::Error::AnswerLost { .. } => Kind::Disconnected,
            etcd::Error::Refused { .. } | etcd::Error::Protocol { .. } => Kind::Failure,
            // A certificate refused, one way or the other: as with an agent.
            etcd::Error::Tls { .. } => Kind::Peer,
        };
        Error::new(kind, error.to_string())
    }
}

/// An I/O error on a named path, for the user.
pub(crate) fn io_error(doing: impl fmt::Display, error: std::io::Error) -> Error {
    Error::new(Kind::Io, format!("{doing}: {error}"))
}
