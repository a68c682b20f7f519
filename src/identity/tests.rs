use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rustls::pki_types::{ServerName, UnixTime};

use super::keys::{self, NewKey};
use super::testing::{self, TestCert};
use super::validity::{Validity, utc};
use super::*;
use crate::error::Kind;
use crate::testing::TempDir;

fn now() -> UnixTime {
    UnixTime::now()
}

fn pinning(certs: &[(&str, &TestCert)]) -> Trust {
    Trust { pinned: certs.iter().map(|(name, cert)| cert.pinned_as(name)).collect(), ca: Vec::new() }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn init(dir: &Path, name: &str, sans: &[String], force: bool) -> Result<Fingerprint> {
    keys::init(dir, &NewKey { name, sans, days: 3650, force })
}

#[test]
fn init_makes_a_key_that_loads_with_its_fingerprint() {
    let dir = TempDir::new("identity-init");
    let config = dir.path().join("etc-ferry");
    let fingerprint = init(&config, "edge-1", &["10.0.0.7".into(), "edge-1.lan".into()], false).unwrap();
    let identity = Identity::load(&config).unwrap();
    assert_eq!(identity.fingerprint, fingerprint);
    // The fingerprint is the SHA-256 of the SPKI, as openssl computes it.
    let spki = webpki::EndEntityCert::try_from(&identity.cert).unwrap().subject_public_key_info().as_ref().to_vec();
    assert_eq!(fingerprint.as_str(), format!("sha256:{}", crate::payload::hex(&Sha256::digest(&spki))));
    assert_eq!(common_name(&identity.cert).as_deref(), Some("edge-1"));
    assert_eq!(mode(&config.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&config.join(CERT_FILE)), 0o644);
    assert_eq!(mode(&config), 0o755);
    // Its own pin identifies it both ways, under every name it was given.
    let trust = Trust { pinned: vec![Pinned { name: "edge-1".into(), fingerprint }], ca: Vec::new() };
    for usage in [Usage::Agent, Usage::Source] {
        assert_eq!(trust.identify(&identity.cert, &[], now(), usage).unwrap().name, "edge-1");
    }
    for name in ["edge-1", "edge-1.lan", "10.0.0.7"] {
        Trust::check_name(&identity.cert, &ServerName::try_from(name).unwrap()).unwrap();
    }
    let validity = Validity::of(&identity.cert).unwrap();
    let now_secs = crate::host::unix_now() as i64;
    assert!(validity.contains(now_secs));
    assert!((validity.not_after - now_secs - 3650 * 86_400).abs() < 60, "{}", utc(validity.not_after));
    // PKCS#8 v1 (version 0, the private key alone), which OpenSSL 3.0's curl reads.
    let der = identity.key.secret_pkcs8_der();
    assert_eq!(der.len(), 48, "a v1 Ed25519 key is 48 bytes, v2 adds the public key");
    assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
    // And it signs as the certificate says.
    let signature = identity.sign(b"manifest");
    verify(&trust, b"manifest", &identity, &signature).unwrap();
}

#[test]
fn init_refuses_to_replace_a_key_without_force() {
    let dir = TempDir::new("identity-init-twice");
    let first = init(dir.path(), "edge-1", &[], false).unwrap();
    let error = init(dir.path(), "edge-1", &[], false).unwrap_err();
    assert_eq!(error.kind, Kind::Usage);
    assert!(error.message.contains("key.pem") && error.message.contains("--force"), "{error}");
    assert_eq!(Identity::load(dir.path()).unwrap().fingerprint, first);
    let second = init(dir.path(), "edge-1", &[], true).unwrap();
    assert_ne!(first, second);
    assert_eq!(Identity::load(dir.path()).unwrap().fingerprint, second);
    assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
}

#[test]
fn init_refuses_bad_names_and_days() {
    let dir = TempDir::new("identity-init-bad");
    assert_eq!(init(dir.path(), "-edge", &[], false).unwrap_err().kind, Kind::Usage);
    assert_eq!(init(dir.path(), "edge", &["a b".into()], false).unwrap_err().kind, Kind::Usage);
    let error = keys::init(dir.path(), &NewKey { name: "edge", sans: &[], days: 0, force: false }).unwrap_err();
    assert!(error.message.contains("--days"), "{error}");
    assert!(!dir.path().join(KEY_FILE).exists());
}

#[test]
fn identify_accepts_a_pinned_self_signed_cert_and_refuses_an_unpinned_one() {
    let edge = testing::self_signed("edge-1", &[], -1..30);
    let stranger = testing::self_signed("edge-1", &[], -1..30);
    let trust = pinning(&[("edge-1", &edge)]);
    let peer = trust.identify(&edge.cert, &[], now(), Usage::Agent).unwrap();
    assert_eq!(peer, Peer { name: "edge-1".into(), fingerprint: edge.fingerprint() });
    let refused = trust.identify(&stranger.cert, &[], now(), Usage::Agent).unwrap_err();
    assert!(refused.contains("ferry trust add"), "{refused}");
}

#[test]
fn identify_refuses_a_pinned_cert_out_of_its_validity() {
    let expired = testing::self_signed("edge-1", &[], -10..-1);
    let trust = pinning(&[("edge-1", &expired)]);
    assert!(trust.identify(&expired.cert, &[], now(), Usage::Source).is_err());
    let current = testing::self_signed("edge-2", &[], -1..10);
    let trust = pinning(&[("edge-2", &current)]);
    let in_a_month = UnixTime::since_unix_epoch(Duration::from_secs(now().as_secs() + 30 * 86_400));
    assert!(trust.identify(&current.cert, &[], now(), Usage::Source).is_ok());
    assert!(trust.identify(&current.cert, &[], in_a_month, Usage::Source).is_err());
}

#[test]
fn identify_accepts_a_cert_of_the_fleet_ca_and_refuses_another_ca() {
    let fleet = testing::ca("fleet");
    let other = testing::ca("fleet");
    let dir = TempDir::new("identity-ca");
    fleet.install_as_ca(dir.path());
    let trust = Trust::load(dir.path()).unwrap();
    let ours = testing::issued_by(&fleet, "edge-3", &["10.0.0.3"], -1..30);
    let theirs = testing::issued_by(&other, "edge-3", &["10.0.0.3"], -1..30);
    let peer = trust.identify(&ours.cert, &[], now(), Usage::Agent).unwrap();
    assert_eq!(peer, Peer { name: "edge-3".into(), fingerprint: ours.fingerprint() });
    assert!(trust.identify(&theirs.cert, &[], now(), Usage::Agent).is_err());
    let expired = testing::issued_by(&fleet, "edge-3", &[], -10..-1);
    assert!(trust.identify(&expired.cert, &[], now(), Usage::Agent).is_err());
}

#[test]
fn a_pinned_key_stays_trusted_when_a_ca_issues_its_certificate() {
    // `ferry keys install-cert` swaps a self-signed certificate for a
    // CA-issued one with the same key: peers that pinned the key and have no
    // ca.pem must go on trusting it, within the new certificate's validity.
    let fleet = testing::ca("fleet");
    let edge = testing::self_signed("edge-4", &[], -1..30);
    let trust = pinning(&[("edge-4", &edge)]);
    let renewed = testing::issued_for(&fleet, &edge.key, "edge-4", -1..30);
    assert_eq!(renewed.fingerprint(), edge.fingerprint());
    assert_eq!(trust.identify(&renewed.cert, &[], now(), Usage::Agent).unwrap().name, "edge-4");
    let expired = testing::issued_for(&fleet, &edge.key, "edge-4", -10..-1);
    assert!(trust.identify(&expired.cert, &[], now(), Usage::Agent).is_err());
}

#[test]
fn check_name_accepts_a_san_and_refuses_another_name() {
    let edge = testing::self_signed("edge-5", &["192.168.1.5"], -1..30);
    Trust::check_name(&edge.cert, &ServerName::try_from("192.168.1.5").unwrap()).unwrap();
    Trust::check_name(&edge.cert, &ServerName::try_from("edge-5").unwrap()).unwrap();
    assert!(Trust::check_name(&edge.cert, &ServerName::try_from("192.168.1.6").unwrap()).is_err());
    assert!(Trust::check_name(&edge.cert, &ServerName::try_from("edge-6").unwrap()).is_err());
}

/// `message` with `signature` and `signer`'s certificate, as restore checks a payload's seal.
fn verify(trust: &Trust, message: &[u8], signer: &Identity, signature: &[u8]) -> std::result::Result<Option<crate::payload::Signer>, String> {
    use crate::payload::Verify;
    super::Verifier::new(trust.clone(), None, false).verify(message, Some(&crate::payload::Seal::new(&signer.cert, signature)))
}

#[test]
fn a_signature_is_accepted_from_the_pinned_key_only() {
    let dir = TempDir::new("identity-sign");
    let edge = testing::self_signed("edge-6", &[], -1..30);
    edge.install(dir.path());
    let identity = Identity::load(dir.path()).unwrap();
    let message = b"manifest sha256:00";
    let signature = identity.sign(message);
    let trust = pinning(&[("edge-6", &edge)]);
    assert_eq!(verify(&trust, message, &identity, &signature).unwrap().unwrap().name, "edge-6");
    let mut flipped = signature.clone();
    flipped[7] ^= 1;
    assert!(verify(&trust, message, &identity, &flipped).is_err());
    assert!(verify(&trust, b"manifest sha256:01", &identity, &signature).is_err());

    let other_dir = TempDir::new("identity-sign-other");
    let stranger = testing::self_signed("edge-6", &[], -1..30);
    stranger.install(other_dir.path());
    let stranger = Identity::load(other_dir.path()).unwrap();
    let refused = verify(&trust, message, &stranger, &stranger.sign(message)).unwrap_err();
    assert!(refused.contains("not trusted"), "{refused}");
}

#[test]
fn load_refuses_a_cert_for_another_key() {
    let dir = TempDir::new("identity-mismatch");
    let edge = testing::self_signed("edge-7", &[], -1..30);
    let other = testing::self_signed("edge-7", &[], -1..30);
    edge.install(dir.path());
    fs::write(dir.path().join(CERT_FILE), &other.pem).unwrap();
    let error = Identity::load(dir.path()).unwrap_err();
    assert!(error.message.contains("another key"), "{error}");
}

#[test]
fn install_cert_takes_a_ca_issued_cert_for_this_key_only() {
    let dir = TempDir::new("identity-install");
    let fingerprint = init(dir.path(), "edge-8", &[], false).unwrap();
    let fleet = testing::ca("fleet");
    let csr = keys::csr(dir.path(), None, &[]).unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{csr}");
    let request = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
    let key = rcgen::KeyPair::from_pem(&fs::read_to_string(dir.path().join(KEY_FILE)).unwrap()).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    assert!(request.as_ref().windows(spki.len()).any(|w| w == spki), "the request is for another key");
    let issued = testing::issued_for(&fleet, &key, "edge-8", -1..30);
    let issued_path = dir.path().join("issued.pem");
    fs::write(&issued_path, &issued.pem).unwrap();
    let self_signed = fs::read(dir.path().join(CERT_FILE)).unwrap();

    let wrong = testing::issued_by(&fleet, "edge-8", &[], -1..30);
    let wrong_path = dir.path().join("wrong.pem");
    fs::write(&wrong_path, &wrong.pem).unwrap();
    let error = keys::install_cert(dir.path(), &wrong_path).unwrap_err();
    assert!(error.message.contains("not this host's key"), "{error}");

    assert_eq!(keys::install_cert(dir.path(), &issued_path).unwrap(), fingerprint);
    assert_eq!(fs::read(dir.path().join("cert.pem.old")).unwrap(), self_signed);
    let identity = Identity::load(dir.path()).unwrap();
    assert_eq!(keys::Summary::of(&identity).issuer.as_deref(), Some("fleet"));
    assert_eq!(common_name(&identity.cert).as_deref(), Some("edge-8"));
    assert_eq!(mode(&dir.path().join(CERT_FILE)), 0o644);
}

#[test]
fn trust_edits_keep_comments_and_round_trip() {
    let dir = TempDir::new("identity-trust");
    let a = testing::self_signed("a", &[], -1..30).fingerprint();
    let b = testing::self_signed("b", &[], -1..30).fingerprint();
    fs::write(dir.path().join(TRUST_FILE), "# rack 2\nold-1 sha256:".to_string() + &"0".repeat(64) + "  # retired soon\n").unwrap();
    trusted::add(dir.path(), "edge-a", a.as_str()).unwrap();
    trusted::add(dir.path(), "edge-b", &b.as_str().to_uppercase()).unwrap();
    let names: Vec<String> = Trust::load(dir.path()).unwrap().pinned.into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["old-1", "edge-a", "edge-b"]);
    assert_eq!(mode(&dir.path().join(TRUST_FILE)), 0o644);

    let duplicate = trusted::add(dir.path(), "edge-a", b.as_str()).unwrap_err();
    assert!(duplicate.message.contains("ferry trust remove edge-a"), "{duplicate}");
    assert_eq!(trusted::add(dir.path(), "edge c", a.as_str()).unwrap_err().kind, Kind::Usage);
    assert_eq!(trusted::add(dir.path(), "edge-c", "sha256:abc").unwrap_err().kind, Kind::Usage);

    trusted::remove(dir.path(), "old-1").unwrap();
    assert_eq!(trusted::remove(dir.path(), "old-1").unwrap_err().kind, Kind::NotFound);
    let text = fs::read_to_string(dir.path().join(TRUST_FILE)).unwrap();
    assert_eq!(text, format!("# rack 2\nedge-a {a}\nedge-b {b}\n"));
}

#[test]
fn a_new_trust_file_starts_with_a_comment() {
    let dir = TempDir::new("identity-trust-new");
    let a = testing::self_signed("a", &[], -1..30).fingerprint();
    trusted::add(&dir.path().join("etc"), "edge-a", a.as_str()).unwrap();
    let text = fs::read_to_string(dir.path().join("etc").join(TRUST_FILE)).unwrap();
    assert!(text.starts_with('#') && text.ends_with(&format!("\nedge-a {a}\n")), "{text}");
}

/// A self-signed host certificate valid between two instants, in seconds
/// since the Unix epoch.
fn dated(not_before: u64, not_after: u64) -> Vec<u8> {
    let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let params = keys::host_params("edge-9", &[], at(not_before), at(not_after)).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn validity_round_trips_a_certificates_dates() {
    let edge = testing::self_signed("edge-9", &[], -1..30);
    let validity = Validity::of(&edge.cert).unwrap();
    assert_eq!(validity.not_after - validity.not_before, 31 * 86_400);
    // 2001-02-03 04:05:06 and 2049-12-31 23:59:59: UTCTime, both centuries.
    let cert = dated(981_173_106, 2_524_607_999);
    assert!(contains(&cert, b"\x17\x0d010203040506Z") && contains(&cert, b"\x17\x0d491231235959Z"));
    assert_eq!(Validity::of(&cert), Some(Validity { not_before: 981_173_106, not_after: 2_524_607_999 }));
    assert_eq!(utc(981_173_106), "2001-02-03 04:05:06 UTC");
    assert_eq!(utc(2_524_607_999), "2049-12-31 23:59:59 UTC");
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
}

#[test]
fn validity_reads_generalized_time_from_2050_on() {
    // rcgen writes GeneralizedTime from 2050 on: 2060-01-01 00:00:00 here.
    let cert = dated(981_173_106, 2_840_140_800);
    assert!(contains(&cert, b"\x18\x0f20600101000000Z"));
    let validity = Validity::of(&cert).unwrap();
    assert_eq!(validity, Validity { not_before: 981_173_106, not_after: 2_840_140_800 });
    assert_eq!(utc(validity.not_after), "2060-01-01 00:00:00 UTC");
    assert!(validity.contains(crate::host::unix_now() as i64));
}

#[test]
fn validity_of_an_expired_certificate_ends_in_the_past() {
    let expired = testing::self_signed("edge-9", &[], -10..-1);
    let validity = Validity::of(&expired.cert).unwrap();
    let now_secs = crate::host::unix_now() as i64;
    assert!(!validity.contains(now_secs));
    assert!((now_secs - validity.not_after - 86_400).abs() < 60, "{}", utc(validity.not_after));
    assert!(validity.contains(validity.not_before) && validity.contains(validity.not_after));
}

#[test]
fn validity_of_garbage_is_none() {
    let cert = dated(981_173_106, 2_524_607_999);
    assert!(Validity::of(&cert[..cert.len() - 1]).is_none());
    assert!(Validity::of(&[cert.as_slice(), b"\0"].concat()).is_none());
    for garbage in [&b""[..], b"\x30\x03\x02\x01\x00", b"\x30\x80\x00\x00", b"not a certificate", &[0xff; 64]] {
        assert!(Validity::of(garbage).is_none(), "{garbage:?}");
    }
    // A date that is not one: 31 February.
    let mut bad = cert.clone();
    let at = bad.windows(13).position(|w| w == b"010203040506Z").unwrap();
    bad[at..at + 13].copy_from_slice(b"010231040506Z");
    assert!(Validity::of(&bad).is_none());
}
