//! Certificates: a CA issues node certificates that load as peer settings,
//! name their node and no other, and are refused with another CA's.

use cairn_tls::{check_peer_id, node_cert_file, Ca, Error, PeerTls, CA_CERT_FILE, CA_KEY_FILE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

fn cert_of(dir: &std::path::Path, id: u64) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(dir.join(node_cert_file(id))).unwrap();
    CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().unwrap()
}

#[test]
fn a_ca_issues_node_certificates_that_name_their_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::create(dir.path()).unwrap();
    ca.issue_node(dir.path(), 1, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    ca.issue_node(dir.path(), 2, &[]).unwrap();
    PeerTls::load(dir.path(), 1).unwrap();
    PeerTls::load(dir.path(), 2).unwrap();
    assert_eq!(check_peer_id(&cert_of(dir.path(), 1), 1), Ok(()));
    let posing = check_peer_id(&cert_of(dir.path(), 2), 1).unwrap_err();
    assert!(posing.contains("does not name node 1"), "{posing}");
    // The key is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    for key in [CA_KEY_FILE, "node-1.key"] {
        let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
    }
    // A CA is never overwritten by accident.
    assert!(matches!(Ca::create(dir.path()), Err(Error::Exists { .. })));
    // Loaded again, it issues certificates the same peers accept.
    let again = Ca::load(dir.path()).unwrap();
    again.issue_node(dir.path(), 3, &[]).unwrap();
    PeerTls::load(dir.path(), 3).unwrap();
}

#[test]
fn a_certificate_of_another_ca_or_for_another_node_does_not_load() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    Ca::create(ours.path()).unwrap();
    let other = Ca::create(theirs.path()).unwrap();
    // Another CA's certificate beside our ca.crt.
    other.issue_node(ours.path(), 1, &[]).unwrap();
    let error = PeerTls::load(ours.path(), 1).unwrap_err().to_string();
    assert!(
        error.contains("node-1.crt") && error.contains("not a valid certificate of this CA"),
        "{error}"
    );
    // Node 2's files renamed as node 1's.
    let ca = Ca::load(ours.path()).unwrap();
    ca.issue_node(ours.path(), 2, &[]).unwrap();
    std::fs::copy(ours.path().join("node-2.crt"), ours.path().join("node-1.crt")).unwrap();
    std::fs::copy(ours.path().join("node-2.key"), ours.path().join("node-1.key")).unwrap();
    let error = PeerTls::load(ours.path(), 1).unwrap_err().to_string();
    assert!(error.contains("does not name node 1"), "{error}");
}

#[test]
fn missing_or_broken_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = PeerTls::load(dir.path(), 1).unwrap_err().to_string();
    assert!(error.contains(CA_CERT_FILE) && error.contains("missing"), "{error}");
    let error = Ca::load(dir.path()).err().unwrap().to_string();
    assert!(error.contains("cairn cert create-ca"), "{error}");
    let ca = Ca::create(dir.path()).unwrap();
    let error = PeerTls::load(dir.path(), 4).unwrap_err().to_string();
    assert!(error.contains("node-4.crt") && error.contains("create-node"), "{error}");
    ca.issue_node(dir.path(), 4, &[]).unwrap();
    std::fs::write(dir.path().join("node-4.key"), "not a key").unwrap();
    let error = PeerTls::load(dir.path(), 4).unwrap_err().to_string();
    assert!(error.contains("node-4.key"), "{error}");
    std::fs::write(dir.path().join(CA_CERT_FILE), "-----BEGIN CERTIFICATE-----\nxx\n").unwrap();
    let error = PeerTls::load(dir.path(), 4).unwrap_err().to_string();
    assert!(error.contains(CA_CERT_FILE), "{error}");
}
