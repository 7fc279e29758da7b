//! TLS between members of a cluster, for clusters that span networks: every link
//! between origins (Raft RPC, forwarded requests, feeds) and from edges to origins (the
//! media link, control requests, shared-object feeds) is mutual TLS with one cluster CA.
//!
//! Membership is the CA's signature: a node presents a certificate the CA signed, and
//! accepts only peers that do too, in both directions (an origin requires a client
//! certificate on its HTTP port and its media-link port). A server is also checked by
//! name, as any TLS client does: its certificate names the addresses peers dial (IP
//! subject alternative names for the `--origins` and membership addresses). The cluster
//! secret is still sent and checked inside the tunnel.
//!
//! A node's own certificate and key reload like the edge's public one
//! ([`super::watch`]: SIGHUP or a file change); the CA is read once at start (a new CA
//! means restarting every node, as it means reissuing every certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{CertPaths, Certificates, TlsError};

/// Where a node's cluster TLS files are: the CA that signs every member, and this
/// node's certificate (for both serving and connecting) and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsPaths {
    pub ca: PathBuf,
    pub identity: CertPaths,
}

impl PeerTlsPaths {
    /// All three files or none; naming only some is an error (most likely a typo).
    pub(crate) fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<PeerTlsPaths>, String> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(PeerTlsPaths { ca, identity: CertPaths { cert, key } })),
            _ => Err("--peer-tls-ca, --peer-tls-cert and --peer-tls-key go together (PEM files)".into()),
        }
    }
}

/// This node's side of the cluster's mutual TLS.
pub struct PeerTls {
    identity: Arc<Certificates>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// ALPN between members: HTTP/1.1 (the peer HTTP client speaks nothing else); the media
/// link offers none.
const ALPN_PEER_HTTP: &[&[u8]] = &[b"http/1.1"];

impl PeerTls {
    /// The cluster's mutual TLS when the node is configured with it (`--peer-tls-*`);
    /// blocking file reads, like [`PeerTls::load`].
    pub(crate) fn load_configured(paths: Option<&PeerTlsPaths>) -> anyhow::Result<Option<Arc<PeerTls>>> {
        use anyhow::Context;
        paths.map(PeerTls::load).transpose().context("loading the cluster TLS files")
    }

    /// Reads the CA and this node's pair (blocking file reads: call at start-up).
    pub fn load(paths: &PeerTlsPaths) -> Result<Arc<PeerTls>, TlsError> {
        let identity = Certificates::load(paths.identity.clone())?;
        let provider = identity.provider();
        let roots = Arc::new(read_roots(&paths.ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Ca { path: paths.ca.clone(), reason: e.to_string() })?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(identity.clone());
        server.alpn_protocols = ALPN_PEER_HTTP.iter().map(|p| p.to_vec()).collect();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(ClientIdentity(identity.clone())));
        Ok(Arc::new(PeerTls { identity, server: Arc::new(server), client: Arc::new(client) }))
    }

    /// This node's certificate, for [`super::watch`] to reload.
    pub(crate) fn identity(&self) -> &Arc<Certificates> {
        &self.identity
    }

    /// Accepts members only (a client certificate signed by the CA), offering HTTP/1.1
    /// by ALPN to clients that ask (the media link asks for nothing).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// Connects to members only, presenting this node's certificate.
    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }

    /// The client configuration, for an HTTP client (HTTP/1.1 by ALPN).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = (*self.client).clone();
        config.alpn_protocols = ALPN_PEER_HTTP.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// The name a member at `addr` must carry in its certificate.
    pub(crate) fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
        ServerName::IpAddress(addr.ip().into())
    }
}

/// The cluster CA's certificates (a file may hold several, e.g. old and new during a
/// CA change).
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Ca { path: path.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Ca { path: path.into(), reason: "the file holds no certificate".into() });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Ca { path: path.into(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// Presents the node's current certificate to the servers it connects to.
#[derive(Debug)]
struct ClientIdentity(Arc<Certificates>);

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
