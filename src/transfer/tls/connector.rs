//! What a failed TLS call to an agent means, in words: the connector itself
//! ([`TlsConnector`]) is shared with the fleet's etcd client and lives below
//! both, in `tls_client.rs`.

use rustls::{AlertDescription, CertificateError};

pub(crate) use crate::tls_client::TlsConnector;

use super::Untrusted;

/// What went wrong with TLS in a failed call, as what the agent did ("is
/// not trusted: …", "refused our certificate …"), or None when the failure
/// was not about TLS.
pub(crate) fn describe(error: &ureq::Error) -> Option<String> {
    let ureq::Error::Io(io) = error else { return None };
    let rustls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match rustls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => match other.0.downcast_ref::<Untrusted>() {
            Some(why) => format!("is not trusted: {why}"),
            None => format!("is not trusted: {other}"),
        },
        rustls::Error::InvalidCertificate(other) => format!("is not trusted: {other}"),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied),
        ) => format!(
            "refused our certificate ({alert:?}): it must trust this host's key (`ferry trust add` there) or the fleet CA that issued it, \
             and the certificate must be valid"
        ),
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            "does not speak TLS 1.3 (is it an older ferry?)".to_string()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "does not answer in TLS (is it running without TLS, in --insecure mode?)".to_string()
        }
        other => format!("failed the TLS handshake: {other}"),
    })
}
