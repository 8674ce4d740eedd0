//! Certificates for a Cairn cluster, and the TLS settings made from them.
//!
//! A cluster has one certificate authority (CA). It issues each node a
//! certificate whose names include `node-<id>.cairn`, the node's identity
//! among its peers, and the host names and addresses clients reach it by.
//! Peers connect with mutual TLS (1.3 only):
//!
//! - the dialing node checks that the certificate of the node it reached is
//!   the CA's and names `node-<to>.cairn`, the node it meant to reach;
//! - the accepting node checks that the dialer's certificate is the CA's,
//!   and, once the dialer says which node it is, that its certificate names
//!   that node ([`check_peer_id`]). A certificate of node 2 cannot pose as
//!   node 1.
//!
//! Files, in one directory (as `cockroach cert` lays them out): `ca.crt`
//! (every node needs it), `ca.key` (only where certificates are issued; no
//! node reads it), and `node-<id>.crt` with `node-<id>.key` for each node.
//! Keys are written readable by their owner only.
//!
//! Rotation: issue new node certificates from the same CA and restart nodes
//! one at a time. A new CA needs every node's certificate reissued; nodes
//! with certificates of different CAs cannot talk.
//!
//! Host agents talk gRPC over mutual TLS with the same CA ([`AgentTls`]):
//! each has a certificate naming `agent.cairn` (`agent.crt`, `agent.key`),
//! and an agent takes calls only from a client whose certificate names it
//! too, so a node's certificate cannot stop another host's node.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The CA's certificate.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA's private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a CA certificate is valid.
pub const CA_VALID_DAYS: i64 = 10 * 365;
/// How long a node certificate is valid.
pub const NODE_VALID_DAYS: i64 = 5 * 365;
/// Most bytes of a certificate or key file read.
const PEM_FILE_BYTES_MAX: usize = 1024 * 1024;

/// A node's certificate file.
pub fn node_cert_file(id: u64) -> String {
    format!("node-{id}.crt")
}

/// A node's key file.
pub fn node_key_file(id: u64) -> String {
    format!("node-{id}.key")
}

/// The name a node's certificate carries as its identity among peers.
pub fn peer_name(id: u64) -> String {
    format!("node-{id}.cairn")
}

/// The name every agent's certificate carries.
pub const AGENT_NAME: &str = "agent.cairn";
/// An agent's certificate file.
pub const AGENT_CERT_FILE: &str = "agent.crt";
/// An agent's key file.
pub const AGENT_KEY_FILE: &str = "agent.key";

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("{} is missing: {hint}", path.display())]
    Missing { path: PathBuf, hint: &'static str },
    #[error("{} exists already: remove it first to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{} is not a valid {what}: {message}", path.display())]
    Invalid { path: PathBuf, what: &'static str, message: String },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificates cannot be used for TLS: {0}")]
    Tls(String),
}

/// The cluster's certificate authority, able to issue node certificates.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// Makes a new CA and writes `ca.crt` and `ca.key` into `dir` (created
    /// if missing); refuses to overwrite either.
    pub fn create(dir: &Path) -> Result<Ca, Error> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(Error::Exists { path: path.clone() });
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "Cairn cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALID_DAYS);
        let cert = params.self_signed(&key)?;
        create_dir(dir)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        Ok(Ca { cert_pem: cert.pem(), key })
    }

    /// Reads the CA from `ca.crt` and `ca.key` in `dir`.
    pub fn load(dir: &Path) -> Result<Ca, Error> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let hint = "create the CA first (`cairn cert create-ca`)";
        let cert_pem = read_text(&cert_path, hint)?;
        let key_pem = read_text(&key_path, hint)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| Error::Invalid {
            path: key_path.clone(),
            what: "private key",
            message: e.to_string(),
        })?;
        // The certificate must parse and match the key.
        let ca = Ca { cert_pem, key };
        ca.issuer(&cert_path)?;
        Ok(ca)
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self, path: &Path) -> Result<Issuer<'_, &KeyPair>, Error> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            what: "CA certificate",
            message: e.to_string(),
        })
    }

    /// Issues node `id` a certificate naming `node-<id>.cairn` and `hosts`
    /// (host names or IP addresses clients reach it by), and writes it with
    /// its key into `dir` (`node-<id>.crt`, `node-<id>.key`; replaced if
    /// there: issuing again is how a certificate is rotated). `dir` gets a
    /// copy of `ca.crt` too, so it holds everything the node needs.
    pub fn issue_node(&self, dir: &Path, id: u64, hosts: &[String]) -> Result<PathBuf, Error> {
        let mut names = vec![peer_name(id)];
        names.extend(hosts.iter().cloned());
        let files = (node_cert_file(id), node_key_file(id));
        self.issue(dir, names, &format!("cairn node {id}"), files)
    }

    /// Issues a host agent its certificate, naming [`AGENT_NAME`] and
    /// `hosts`, into `dir` (`agent.crt`, `agent.key`, and `ca.crt`).
    pub fn issue_agent(&self, dir: &Path, hosts: &[String]) -> Result<PathBuf, Error> {
        let mut names = vec![AGENT_NAME.to_string()];
        names.extend(hosts.iter().cloned());
        let files = (AGENT_CERT_FILE.to_string(), AGENT_KEY_FILE.to_string());
        self.issue(dir, names, "cairn agent", files)
    }

    fn issue(
        &self,
        dir: &Path,
        names: Vec<String>,
        common_name: &str,
        (cert_file, key_file): (String, String),
    ) -> Result<PathBuf, Error> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALID_DAYS);
        let key = KeyPair::generate()?;
        let issuer = self.issuer(&dir.join(CA_CERT_FILE))?;
        let cert = params.signed_by(&key, &issuer)?;
        create_dir(dir)?;
        let cert_path = dir.join(cert_file);
        write_file(&dir.join(key_file), key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        let ca_path = dir.join(CA_CERT_FILE);
        if !ca_path.exists() {
            write_file(&ca_path, self.cert_pem.as_bytes(), false)?;
        }
        Ok(cert_path)
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that run behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// What a node needs to talk to its peers over mutual TLS.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// For connections this node accepts: asks for a client certificate of
    /// the CA.
    pub server: Arc<ServerConfig>,
    /// For connections this node dials: presents its own certificate.
    pub client: Arc<ClientConfig>,
    /// For the client API (HTTPS): the node's certificate, no client
    /// certificate asked (clients show bearer tokens instead).
    pub api: Arc<ServerConfig>,
}

impl PeerTls {
    /// Node `id`'s settings, from `ca.crt`, `node-<id>.crt` and
    /// `node-<id>.key` in `dir`. Checks that the certificate is the CA's and
    /// names the node.
    pub fn load(dir: &Path, id: u64) -> Result<PeerTls, Error> {
        let hint = "issue it with `cairn cert create-node`";
        let cert_path = dir.join(node_cert_file(id));
        let (ca, chain, key) = read_identity(dir, &cert_path, &dir.join(node_key_file(id)), hint)?;
        PeerTls::new(ca, chain, key, id).map_err(|e| match e {
            Error::Tls(message) => {
                Error::Invalid { path: cert_path.clone(), what: "node certificate", message }
            }
            other => other,
        })
    }

    /// Node `id`'s settings from certificates in memory.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        id: u64,
    ) -> Result<PeerTls, Error> {
        // The node's own certificate must be the CA's and name the node, or
        // every peer would refuse it: say so at start, not at each dial.
        let api = api_server(chain.clone(), key.clone_key())?;
        let (server, client) =
            mutual(ca, chain, key, |first| check_peer_id(std::slice::from_ref(first), id))?;
        Ok(PeerTls { server, client, api })
    }

    /// The name a dialing node expects the certificate of node `id` to have.
    pub fn server_name(id: u64) -> ServerName<'static> {
        // `node-<id>.cairn` is always a valid DNS name.
        ServerName::try_from(peer_name(id)).expect("a valid DNS name")
    }
}

/// What a host agent needs to serve and call gRPC over mutual TLS.
#[derive(Clone, Debug)]
pub struct AgentTls {
    /// For calls the agent takes: asks for a client certificate of the CA
    /// (which [`check_agent`] then requires to name an agent).
    pub server: Arc<ServerConfig>,
    /// For calls the agent makes: presents its own certificate and expects
    /// the other agent's to name [`AGENT_NAME`].
    pub client: Arc<ClientConfig>,
}

impl AgentTls {
    /// The settings from `ca.crt`, `agent.crt` and `agent.key` in `dir`.
    pub fn load(dir: &Path) -> Result<AgentTls, Error> {
        let hint = "an agent with --ca-dir issues it itself";
        let cert_path = dir.join(AGENT_CERT_FILE);
        let (ca, chain, key) = read_identity(dir, &cert_path, &dir.join(AGENT_KEY_FILE), hint)?;
        let (server, client) =
            mutual(ca, chain, key, |first| check_agent(std::slice::from_ref(first))).map_err(
                |e| match e {
                    Error::Tls(message) => Error::Invalid {
                        path: cert_path.clone(),
                        what: "agent certificate",
                        message,
                    },
                    other => other,
                },
            )?;
        Ok(AgentTls { server, client })
    }

    /// The name an agent's certificate must have.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(AGENT_NAME).expect("a valid DNS name")
    }
}

/// Checks that a client's certificate (verified as the CA's by the
/// handshake) is an agent's, not a node's.
pub fn check_agent(certs: &[CertificateDer<'_>]) -> Result<(), String> {
    check_name(certs, "caller", &AgentTls::server_name(), AGENT_NAME)
}

/// Checks that the end-entity certificate of `who` (the first of `certs`)
/// is valid for `name` (`shown` in the message).
fn check_name(
    certs: &[CertificateDer<'_>],
    who: &str,
    name: &ServerName<'_>,
    shown: &str,
) -> Result<(), String> {
    let cert = certs.first().ok_or_else(|| format!("the {who} presented no certificate"))?;
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("the {who}'s certificate does not parse: {e}"))?;
    cert.verify_is_valid_for_subject_name(name)
        .map_err(|_| format!("the {who}'s certificate does not name {shown}"))
}

/// The client API's TLS: TLS 1.2 or 1.3 (what curl and browsers speak),
/// HTTP/1.1, no client certificate.
fn api_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Error> {
    let tls = |e: rustls::Error| Error::Tls(e.to_string());
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a client of a node's HTTPS API needs: trust in the cluster's CA
/// (the `ca.crt` at `ca_path`) and no other, so a certificate from any
/// other authority is refused.
pub fn api_client(ca_path: &Path) -> Result<Arc<ClientConfig>, Error> {
    let hint = "the cluster's CA certificate (`.cairn/ca/ca.crt` for `cairn up`)";
    let pem = read_text(ca_path, hint)?;
    let tls = |e: rustls::Error| Error::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(ca_path, &pem, "CA certificate")? {
        roots.add(cert).map_err(tls)?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA, the certificate chain and the key of one identity in `dir`.
#[allow(clippy::type_complexity)]
fn read_identity(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    hint: &'static str,
) -> Result<
    (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    Error,
> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca_pem = read_text(&ca_path, "copy the cluster's ca.crt there")?;
    let cert_pem = read_text(cert_path, hint)?;
    let key_pem = read_text(key_path, hint)?;
    let ca = pem_certs(&ca_path, &ca_pem, "CA certificate")?;
    let chain = pem_certs(cert_path, &cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Invalid {
        path: key_path.to_path_buf(),
        what: "private key",
        message: e.to_string(),
    })?;
    Ok((ca, chain, key))
}

/// Mutual TLS 1.3 settings for one identity of the CA: a server that asks
/// for a client certificate of the CA, and a client that presents `chain`
/// and checks the server's against the CA. `identity` checks the identity's
/// own certificate, so a wrong one is said at start, not at each call.
fn mutual(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: impl FnOnce(&CertificateDer<'static>) -> Result<(), String>,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), Error> {
    let tls = |e: rustls::Error| Error::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(tls)?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(provider());
    let first = chain.first().ok_or_else(|| Error::Tls("no certificate".into()))?;
    verify_chain(&roots, &provider, first, &chain[1..])?;
    identity(first).map_err(Error::Tls)?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls)?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(tls)?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// Makes *ring* the process's default TLS cryptography, once: HTTP clients
/// that build their own TLS settings (reqwest's) take the default, and
/// there is none until one is installed. Idempotent; a default installed
/// first is kept.
pub fn install_default_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = provider().install_default();
    });
}

/// The cryptography: *ring*'s, which builds with a C compiler alone (the
/// alternative, aws-lc, needs cmake and more). It has no post-quantum key
/// exchange, which rustls notes by deprecating it; the classical X25519 and
/// P-256 exchanges it has are what peers of one cluster need today.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Checks that the end-entity certificate of a peer (as the TLS handshake
/// gave it, already verified as the CA's) names node `id`.
pub fn check_peer_id(certs: &[CertificateDer<'_>], id: u64) -> Result<(), String> {
    let shown = format!("node {id} ({})", peer_name(id));
    check_name(certs, "peer", &PeerTls::server_name(id), &shown)
}

fn verify_chain(
    roots: &Arc<RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    cert: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    verifier
        .verify_client_cert(cert, intermediates, rustls_pki_types::UnixTime::now())
        .map(drop)
        .map_err(|e| Error::Tls(format!("it is not a valid certificate of this CA: {e}")))
}

fn pem_certs(
    path: &Path,
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let invalid = |message: String| Error::Invalid { path: path.to_path_buf(), what, message };
    let certs = certs.map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_text(path: &Path, hint: &'static str) -> Result<String, Error> {
    let bytes = cairn_util::files::read_capped(path, PEM_FILE_BYTES_MAX)
        .map_err(|source| Error::Io { action: "read", path: path.to_path_buf(), source })?
        .ok_or_else(|| Error::Missing { path: path.to_path_buf(), hint })?;
    String::from_utf8(bytes).map_err(|_| Error::Invalid {
        path: path.to_path_buf(),
        what: "PEM file",
        message: "it is not text".into(),
    })
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a file whole; a key is readable by its owner only.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), Error> {
    let written = if private {
        cairn_util::files::write_atomic_private(path, bytes)
    } else {
        cairn_util::files::write_atomic(path, bytes)
    };
    written.map_err(|source| Error::Io { action: "write", path: path.to_path_buf(), source })
}
