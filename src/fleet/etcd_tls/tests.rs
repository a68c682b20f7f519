//! TLS to a real etcd 3.4 with client certificates (`#[ignore]`d like the
//! fleet's other etcd tests): ferry's Ed25519 host certificates must be
//! accepted by Go's crypto/tls, and each way a certificate can be wrong must
//! be told with its remedy.

use std::path::Path;

use super::EtcdTls;
use crate::error::{self, Kind};
use crate::fleet::etcd::{Compare, Cmp, Error, Etcd, Op, Txn};
use crate::fleet::testing::LocalEtcd;
use crate::identity::testing::{self, TestCert};
use crate::testing::TempDir;

/// A config dir holding `cert` as this host's identity, and `fleet_ca` as ca.pem if given.
fn config_dir(label: &str, cert: &TestCert, fleet_ca: Option<&TestCert>) -> TempDir {
    let dir = TempDir::new(&format!("etcd-tls-{label}"));
    cert.install(dir.path());
    if let Some(ca) = fleet_ca {
        ca.install_as_ca(dir.path());
    }
    dir
}

fn connect(etcd: &LocalEtcd, dir: &Path, etcd_ca: Option<&Path>) -> Etcd {
    Etcd::connect_with(&etcd.url, Some(EtcdTls::load(dir, etcd_ca).unwrap())).unwrap()
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn a_host_certificate_issued_by_etcds_ca_puts_gets_and_keeps_a_lease_over_tls() {
    let ca = testing::ca("fleet-ca");
    let local = LocalEtcd::start_tls("tls-ok", &ca);
    assert!(local.url.starts_with("https://"), "{}", local.url);
    // What `ferry keys csr` + the CA + `ferry keys install-cert` leave: an
    // Ed25519 key with a certificate from the fleet CA, which is ca.pem.
    let dir = config_dir("ok", &testing::issued_by(&ca, "node-a", &[], -1..3650), Some(&ca));
    let etcd = connect(&local, dir.path(), None);
    etcd.put("/ferry/test/a", b"over tls", None).unwrap();
    assert_eq!(etcd.get("/ferry/test/a").unwrap().unwrap().value, b"over tls");
    let lease = etcd.grant(30).unwrap();
    etcd.put("/ferry/test/leased", b"x", Some(lease.id)).unwrap();
    assert_eq!(etcd.keep_alive(lease.id).unwrap(), Some(30));
    let swap = Txn {
        compare: vec![Compare::Value("/ferry/test/a".into(), Cmp::Equal, b"over tls".to_vec())],
        success: vec![Op::Put { key: "/ferry/test/a".into(), value: b"swapped".to_vec(), lease: None }],
        failure: vec![],
    };
    assert!(etcd.txn(&swap).unwrap().succeeded);
    etcd.revoke(lease.id).unwrap();
    assert!(etcd.get("/ferry/test/leased").unwrap().is_none());
    // The same CA named with --etcd-ca, and a renewal's shorter timeouts.
    let named = connect(&local, dir.path(), Some(&dir.path().join("ca.pem"))).answering_within(std::time::Duration::from_secs(2));
    assert_eq!(named.get("/ferry/test/a").unwrap().unwrap().value, b"swapped");
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn etcd_refuses_a_host_certificate_its_ca_did_not_issue_and_ferry_says_how_to_get_one() {
    let ca = testing::ca("fleet-ca");
    let local = LocalEtcd::start_tls("tls-client", &ca);
    // `ferry keys init` alone: self-signed, and etcd's CA never saw it.
    let dir = config_dir("client", &testing::self_signed("node-b", &[], -1..3650), Some(&ca));
    let refused = connect(&local, dir.path(), None).get("/ferry/test/a").unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, Error::Tls { .. }), "{message}");
    assert!(message.contains(&format!("TLS to etcd at {}", local.url)), "{message}");
    assert!(message.contains("etcd refused this host's certificate"), "{message}");
    assert!(message.contains("--trusted-ca-file") && message.contains("ferry keys csr"), "{message}");
    assert!(message.contains("ferry keys install-cert"), "{message}");
    assert_eq!(error::Error::from(refused).kind, Kind::Peer);
    // A transaction is refused the same way: nothing was applied.
    let txn = Txn { compare: vec![], success: vec![Op::Delete("k".into())], failure: vec![] };
    let refused = connect(&local, dir.path(), None).txn(&txn).unwrap_err().to_string();
    assert!(refused.contains("etcd refused this host's certificate"), "{refused}");
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn etcds_certificate_from_another_ca_than_etcd_ca_is_refused_naming_that_ca() {
    let ca = testing::ca("fleet-ca");
    let local = LocalEtcd::start_tls("tls-server", &ca);
    let dir = config_dir("server", &testing::issued_by(&ca, "node-c", &[], -1..3650), Some(&ca));
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, testing::ca("other-ca").pem).unwrap();
    let refused = connect(&local, dir.path(), Some(&other)).get("/ferry/test/a").unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, Error::Tls { .. }), "{message}");
    assert!(message.contains(&format!("not issued by the CA in {}", other.display())), "{message}");
    assert!(message.contains("give --etcd-ca the CA that issued etcd's --cert-file"), "{message}");
    // etcd's certificate is for 127.0.0.1, not for "localhost".
    let by_name = local.url.replace("127.0.0.1", "localhost");
    let etcd = Etcd::connect_with(&by_name, Some(EtcdTls::load(dir.path(), None).unwrap())).unwrap();
    let message = etcd.get("/ferry/test/a").unwrap_err().to_string();
    assert!(message.contains("does not name the host of its URL"), "{message}");
}

#[test]
fn https_needs_a_ca_named_by_etcd_ca_or_the_fleet_ca_and_this_hosts_key() {
    let ca = testing::ca("fleet-ca");
    let host = testing::issued_by(&ca, "node-d", &[], -1..3650);
    let no_ca = config_dir("no-ca", &host, None);
    let error = EtcdTls::load(no_ca.path(), None).err().unwrap();
    assert_eq!(error.kind, Kind::Usage);
    assert!(error.message.contains("give --etcd-ca FILE"), "{}", error.message);
    assert!(error.message.contains(&no_ca.path().join("ca.pem").display().to_string()), "{}", error.message);
    let missing = no_ca.path().join("missing.pem");
    let error = EtcdTls::load(no_ca.path(), Some(&missing)).err().unwrap();
    assert!(error.message.contains(&format!("--etcd-ca {} is unusable", missing.display())), "{}", error.message);
    let not_pem = no_ca.path().join("key.pem");
    let error = EtcdTls::load(no_ca.path(), Some(&not_pem)).err().unwrap();
    assert!(error.message.contains("holds no PEM certificate"), "{}", error.message);
    // A CA, but no key: this host's identity is what etcd is shown.
    let no_key = TempDir::new("etcd-tls-no-key");
    ca.install_as_ca(no_key.path());
    let error = EtcdTls::load(no_key.path(), None).err().unwrap();
    assert_eq!(error.kind, Kind::Usage);
    assert!(error.message.contains("ferry keys init"), "{}", error.message);
    assert!(EtcdTls::load(no_ca.path(), Some(&no_key.path().join("ca.pem"))).is_ok());
}
