//! Signed manifests (format 2): `manifest.sig`, right after `manifest.json`,
//! holds the source host's certificate and its Ed25519 signature of the
//! manifest's exact bytes. The manifest lists every entry's size and SHA-256,
//! so one signature vouches for the whole payload: a receiver checks it
//! before it writes anything, then every entry against the manifest.
//!
//! This module only carries seals; who is trusted, and how a signature is
//! made or checked, is decided by whoever implements [`Sign`] and [`Verify`]
//! (`identity::Verifier` in ferry).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Archive path of the seal, the second entry when present.
pub(crate) const SEAL_ENTRY: &str = "manifest.sig";
/// The largest seal ferry reads: a certificate and a signature.
pub(crate) const SEAL_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Seal {
    /// Always "ed25519" for now; named so a later key type is not misread.
    pub algorithm: String,
    /// The signer's X.509 certificate, DER in base64.
    pub certificate: String,
    /// The signature of the manifest's bytes, base64.
    pub signature: String,
}

impl Seal {
    pub(crate) fn new(certificate_der: &[u8], signature: &[u8]) -> Seal {
        Seal {
            algorithm: "ed25519".into(),
            certificate: STANDARD.encode(certificate_der),
            signature: STANDARD.encode(signature),
        }
    }

    /// The certificate and signature bytes, or why they cannot be read.
    pub(crate) fn decode(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        if self.algorithm != "ed25519" {
            return Err(format!("its signature algorithm {:?} is not one ferry checks (ed25519)", self.algorithm));
        }
        let certificate = STANDARD.decode(&self.certificate).map_err(|e| format!("its signer's certificate is not base64: {e}"))?;
        let signature = STANDARD.decode(&self.signature).map_err(|e| format!("its signature is not base64: {e}"))?;
        Ok((certificate, signature))
    }
}

/// Who signed a payload, as the verifier knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Signer {
    pub name: String,
    pub fingerprint: String,
}

/// Signs manifests as they are packed.
pub(crate) trait Sign {
    fn seal(&self, manifest_json: &[u8]) -> Seal;
}

/// Decides, before anything is unpacked, whether a manifest may be used:
/// `Ok(Some(signer))` for a trusted signature, `Ok(None)` for an unsigned
/// payload the policy accepts, `Err(why)` to refuse it.
pub(crate) trait Verify {
    fn verify(&self, manifest_json: &[u8], seal: Option<&Seal>) -> Result<Option<Signer>, String>;
}

/// Accepts every payload without looking at its seal: for the payload
/// module's own tests and the fuzz targets, which test the format, not trust.
#[cfg(any(test, fuzzing))]
pub(crate) struct Unchecked;

#[cfg(any(test, fuzzing))]
impl Verify for Unchecked {
    fn verify(&self, _manifest_json: &[u8], _seal: Option<&Seal>) -> Result<Option<Signer>, String> {
        Ok(None)
    }
}
