//! The client side of TLS for ureq: a connector that wraps the TCP transport
//! ureq's own `TcpConnector` opened in a rustls client connection with a
//! [`ClientConfig`] of ours (ureq's `RustlsConnector` builds its config from
//! ureq's `TlsConfig`, which has no place for our verifier). It works as
//! ureq's does: the handshake runs through a [`TransportAdapter`] over the
//! TCP transport, bounded by the connect timeout, and each read or write
//! after it hands ureq's timeout down to the TCP transport.
//!
//! Below both of its users, which only differ in their config: a source
//! calling an agent (`transfer/tls`, ferry's own trust) and the fleet calling
//! etcd (`fleet/etcd_tls.rs`, a CA's WebPKI chain).

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport, TransportAdapter,
};

/// Wraps every `https://` connection in TLS with `config`; passes plain
/// `http://` ones through untouched.
pub(crate) struct TlsConnector {
    pub(crate) config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else { return Ok(None) };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().unwrap_or_default();
        // An IPv6 literal comes bracketed in a URL.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            ureq::Error::Io(io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?} is neither a host name nor an IP address")))
        })?;
        let mut connection = ClientConnection::new(self.config.clone(), name).map_err(|e| ureq::Error::Io(io::Error::other(e)))?;
        let mut socket = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        socket.set_timeout(details.timeout);
        while connection.is_handshaking() {
            connection.complete_io(&mut socket)?;
        }
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(TlsTransport { buffers, stream: StreamOwned::new(connection, socket) })))
    }
}

/// One TLS connection, to an agent or to etcd.
pub(crate) struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport").field("chained", &self.stream.sock.inner()).finish()
    }
}

impl TlsTransport {
    /// The server's alert behind a connection closed under us, if one came,
    /// else `error`.
    ///
    /// In TLS 1.3 the client's handshake ends before the server has checked
    /// the client's certificate. A server that refuses it (etcd's Go, or an
    /// agent) sends an alert and closes, and the request written next may
    /// meet the closed socket ("broken pipe") with the alert saying why
    /// still unread: read what is left, so the caller learns the reason.
    fn alert_behind(&mut self, error: io::Error) -> io::Error {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        // Not after a timeout: reading again would wait as long again.
        if !matches!(error.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof) {
            return error;
        }
        let StreamOwned { conn, sock } = &mut self.stream;
        while let Ok(1..) = conn.read_tls(sock) {
            if let Err(refusal) = conn.process_new_packets() {
                return io::Error::new(io::ErrorKind::InvalidData, refusal);
            }
        }
        error
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        if let Err(error) = self.stream.write_all(output) {
            return Err(self.alert_behind(error).into());
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let amount = match self.stream.read(self.buffers.input_append_buf()) {
            Ok(amount) => amount,
            // The request may still be unsent: its write fails here.
            Err(error) => return Err(self.alert_behind(error).into()),
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
