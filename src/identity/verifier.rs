//! Payload seals as ferry signs and checks them: a host signs with its own
//! key; a receiver accepts a payload signed by a key it trusts (pinned, under
//! the fleet CA, or its own), and — only when the operator says so — one that
//! is unsigned or signed by a key it does not know. A signature that does not
//! verify is refused whatever the operator says: the payload was altered.

use rustls::pki_types::{CertificateDer, UnixTime};

use super::{Fingerprint, Identity, Trust, Usage};
use crate::payload::{Seal, Sign, Signer, Verify};

impl Sign for Identity {
    fn seal(&self, manifest_json: &[u8]) -> Seal {
        Seal::new(&self.cert, &self.sign(manifest_json))
    }
}

/// Decides which payloads this host restores or stores.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    trust: Trust,
    /// Restore what is unsigned or signed by an unknown key (with a warning).
    accept_untrusted: bool,
    /// Only this key may have signed: the peer the payload came from.
    expect: Option<Fingerprint>,
}

impl Verifier {
    /// Trusts `trust` and this host's own key, if it has one (its own
    /// checkpoint files restore without ceremony).
    pub(crate) fn new(trust: Trust, own: Option<&Identity>, accept_untrusted: bool) -> Verifier {
        let trust = match own {
            Some(own) => trust.with_own(own),
            None => trust,
        };
        Verifier { trust, accept_untrusted, expect: None }
    }

    /// The trust store and key under the config folder; neither need exist
    /// (then only `accept_untrusted` lets a payload through).
    pub(crate) fn load(accept_untrusted: bool) -> crate::error::Result<Verifier> {
        let dir = super::config_dir();
        let trust = Trust::load(&dir)?;
        let own = if dir.join(super::KEY_FILE).exists() { Some(Identity::load(&dir)?) } else { None };
        Ok(Verifier::new(trust, own.as_ref(), accept_untrusted))
    }

    /// The same policy, for a payload that came from the peer with `fingerprint`:
    /// it must be that peer's own signature, not one it relays.
    pub(crate) fn for_peer(&self, fingerprint: Option<&Fingerprint>) -> Verifier {
        Verifier { expect: fingerprint.cloned(), ..self.clone() }
    }
}

impl Verify for Verifier {
    fn verify(&self, manifest_json: &[u8], seal: Option<&Seal>) -> Result<Option<Signer>, String> {
        let Some(seal) = seal else {
            if self.accept_untrusted && self.expect.is_none() {
                log::warn!("restoring an UNSIGNED payload: nothing proves where it comes from");
                return Ok(None);
            }
            return Err(if self.expect.is_some() {
                "it is not signed, and this agent takes only payloads signed by the peer that sends them".into()
            } else {
                "it is not signed (written by an older ferry, or on a host without a key): restore it with \
                 --accept-untrusted if you know where it comes from"
                    .into()
            });
        };
        let (certificate, signature) = seal.decode()?;
        let certificate = CertificateDer::from(certificate);
        let fingerprint = Fingerprint::of_cert(&certificate).map_err(|e| format!("its signer's certificate: {}", e.message))?;
        if let Some(expected) = &self.expect
            && *expected != fingerprint
        {
            return Err(format!("it is signed by {fingerprint}, not by the peer that sent it ({expected})"));
        }
        // The signature is checked first, against the certificate it came
        // with: a failure here means altered bytes, never a trust question.
        let parsed = webpki::EndEntityCert::try_from(&certificate).map_err(|e| format!("its signer's certificate: {e:?}"))?;
        parsed
            .verify_signature(webpki::ring::ED25519, manifest_json, &signature)
            .map_err(|_| format!("its signature does not verify with the key of its signer ({fingerprint}): it was altered"))?;
        let signer = self.trust.identify(&certificate, &[], UnixTime::now(), Usage::Source).map_err(|e| format!("its signer is not trusted: {e}"));
        match signer {
            Ok(peer) => Ok(Some(Signer { name: peer.name, fingerprint: peer.fingerprint.to_string() })),
            Err(why) if self.accept_untrusted && self.expect.is_none() => {
                log::warn!("restoring a payload whose signer is not trusted here ({why}): --accept-untrusted");
                Ok(Some(Signer { name: "untrusted".into(), fingerprint: fingerprint.to_string() }))
            }
            Err(why) => Err(format!("{why} — trust its source with `ferry trust add NAME {fingerprint}`, or pass --accept-untrusted")),
        }
    }
}
