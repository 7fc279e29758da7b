//! TLS for client-facing listeners (RTMPS, HTTPS): the certificate from PEM files,
//! reloaded without a restart, and the rustls server configurations built on it.
//!
//! One [`Certificates`] per process holds the pair in use behind a lock; rustls asks it
//! for the certificate at every handshake ([`ResolvesServerCert`]), so a reload reaches
//! new connections at once and leaves established sessions alone. [`watch`] reloads
//! on SIGHUP and when either file's modification time changes (polled every
//! [`POLL_EVERY`]); a pair that does not parse or whose key does not match its
//! certificate is refused with an error in the log and the old pair stays.
//!
//! [`peer`] is the other use of TLS: mutual, between the members of a cluster.
//!
//! Knows no listener, no session and no route: it hands out acceptors.

pub mod peer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files' modification times are checked.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(2);

/// ALPN for RTMPS: none (clients do not offer any).
pub(crate) const ALPN_NONE: &[&[u8]] = &[];
/// ALPN for HTTPS: HTTP/2 first, then HTTP/1.1.
pub(crate) const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why a certificate/key pair was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("{path}: no usable PEM certificate ({reason})")]
    Certificate { path: PathBuf, reason: String },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 PEM key, or a malformed one.
    #[error("{path}: no usable PEM private key ({reason})")]
    Key { path: PathBuf, reason: String },
    /// The CA file holds no usable certificate.
    #[error("{path}: no usable CA certificate ({reason})")]
    Ca { path: PathBuf, reason: String },
    /// The key is of a kind rustls cannot sign with, or is not the certificate's key.
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
}

/// Where the certificate chain (leaf first) and its private key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// Reads and checks the pair (blocking file reads: call off the runtime).
    pub(crate) fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source });
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate { path: self.cert.clone(), reason: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate { path: self.cert.clone(), reason: "the file holds none".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Key { path: self.key.clone(), reason: e.to_string() })?;
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: e.to_string(),
        })?;
        // `from_der` lets a pair pass when it cannot tell; a certificate rustls cannot
        // even parse must not replace a working one.
        certified
            .end_entity_cert()
            .map_err(|e| TlsError::Certificate { path: self.cert.clone(), reason: e.to_string() })?;
        Ok(certified)
    }

    /// The files' modification times (`None` for a file that cannot be read now).
    fn stamps(&self) -> [Option<SystemTime>; 2] {
        [&self.cert, &self.key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }
}

/// The certificate served to new TLS connections, replaceable while they run.
pub(crate) struct Certificates {
    paths: CertPaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").field("paths", &self.paths).finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads the pair once; a failure here is a start-up error.
    pub(crate) fn load(paths: CertPaths) -> Result<Arc<Certificates>, TlsError> {
        // ring rather than aws-lc-rs: no C toolchain beyond cc (aws-lc wants cmake).
        // rustls 0.23.48 deprecates it for lacking post-quantum key exchange
        // (X25519MLKEM768); classical key exchange is what every RTMPS client offers.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = RwLock::new(Arc::new(paths.load(&provider)?));
        Ok(Arc::new(Certificates { paths, provider, current }))
    }

    /// Reads the files again and, if the pair is good, serves it to new connections.
    /// On an error the pair in use stays. Blocking file reads: call off the runtime.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(self.paths.load(&self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The crypto provider the pair was loaded with.
    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// The pair new connections get.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An acceptor offering `alpn` (e.g. [`ALPN_HTTP`]) with this certificate.
    pub(crate) fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reloads `certs` on SIGHUP and whenever the cert or key file's modification time
/// changes, until `shutdown`. Errors are logged; the pair in use stays.
pub(crate) async fn watch(certs: Arc<Certificates>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: certificates reload on file changes only");
            None
        }
    };
    let stamps = |certs: &Arc<Certificates>| {
        let certs = certs.clone();
        async move { tokio::task::spawn_blocking(move || certs.paths.stamps()).await.unwrap_or([None, None]) }
    };
    let mut seen = stamps(&certs).await;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
            _ = poll.tick() => {
                let now = stamps(&certs).await;
                // A file being replaced may be missing for a moment: wait for both.
                if now == seen || now.iter().any(Option::is_none) {
                    continue;
                }
                seen = now;
                "files changed"
            }
        };
        let reloading = certs.clone();
        match tokio::task::spawn_blocking(move || reloading.reload()).await {
            Ok(Ok(())) => tracing::info!(cert = %certs.paths.cert.display(), %why, "TLS certificate reloaded"),
            Ok(Err(e)) => tracing::error!(error = %e, %why, "TLS certificate not reloaded; still serving the old one"),
            Err(e) => tracing::error!(error = %e, "TLS certificate reload failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate and key for `cn` in `dir`, by openssl.
    fn make_pair(dir: &Path, name: &str, cn: &str, key_kind: &[&str]) -> CertPaths {
        let paths = CertPaths { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}-key.pem")) };
        let mut args = vec!["req", "-x509", "-nodes", "-days", "1", "-subj"];
        let subj = format!("/CN={cn}");
        args.push(&subj);
        args.extend_from_slice(key_kind);
        let (cert, key) = (paths.cert.to_str().unwrap(), paths.key.to_str().unwrap());
        args.extend_from_slice(&["-keyout", key, "-out", cert]);
        let out = Command::new("openssl").args(&args).output().expect("openssl runs");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        paths
    }

    fn leaf(certs: &Certificates) -> Vec<u8> {
        certs.current().end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn a_bad_pair_keeps_the_old_certificate_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = make_pair(dir.path(), "a", "first", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let certs = Certificates::load(first.clone()).unwrap();
        let served = leaf(&certs);

        // A key that is not the certificate's.
        let other = make_pair(dir.path(), "b", "other", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        std::fs::copy(&other.key, &first.key).unwrap();
        assert!(matches!(certs.reload(), Err(TlsError::Mismatch { .. })), "a mismatched key is refused");
        assert_eq!(leaf(&certs), served);
        // Garbage, an empty certificate file, a missing key.
        std::fs::write(&first.cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
        assert!(matches!(certs.reload(), Err(TlsError::Certificate { .. })));
        std::fs::write(&first.cert, b"").unwrap();
        assert!(matches!(certs.reload(), Err(TlsError::Certificate { .. })));
        std::fs::copy(&other.cert, &first.cert).unwrap();
        std::fs::remove_file(&first.key).unwrap();
        assert!(matches!(certs.reload(), Err(TlsError::Read { .. })));
        assert_eq!(leaf(&certs), served, "every bad pair left the first certificate in place");

        // A good pair (RSA, PKCS#8 as openssl writes it) is served next.
        let rsa = make_pair(dir.path(), "c", "third", &["-newkey", "rsa:2048"]);
        std::fs::copy(&rsa.cert, &first.cert).unwrap();
        std::fs::copy(&rsa.key, &first.key).unwrap();
        certs.reload().unwrap();
        assert_eq!(leaf(&certs), std::fs::read(&rsa.cert).map(|pem| pem_der(&pem)).unwrap());
    }

    #[test]
    fn pkcs1_and_sec1_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = make_pair(dir.path(), "r", "rsa", &["-newkey", "rsa:2048"]);
        let out = Command::new("openssl")
            .args(["rsa", "-in", rsa.key.to_str().unwrap(), "-traditional", "-out", rsa.key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(std::fs::read_to_string(&rsa.key).unwrap().contains("BEGIN RSA PRIVATE KEY"));
        Certificates::load(rsa).unwrap();
        let ec = make_pair(dir.path(), "e", "ec", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let out = Command::new("openssl")
            .args(["ec", "-in", ec.key.to_str().unwrap(), "-out", ec.key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(std::fs::read_to_string(&ec.key).unwrap().contains("BEGIN EC PRIVATE KEY"));
        Certificates::load(ec).unwrap();
    }

    fn pem_der(pem: &[u8]) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem).unwrap().to_vec()
    }
}

/// TLS handshakes on one listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub(crate) ok: std::sync::atomic::AtomicU64,
    /// The client's hello or the handshake was bad (or the client gave up).
    pub(crate) failed: std::sync::atomic::AtomicU64,
    /// Not finished within the listener's deadline.
    pub(crate) timed_out: std::sync::atomic::AtomicU64,
}

impl HandshakeStats {
    /// Counts the outcome of a handshake under a deadline; the stream, or why not.
    pub(crate) fn record<S>(
        &self,
        outcome: Result<std::io::Result<S>, tokio::time::error::Elapsed>,
    ) -> Result<S, String> {
        use std::sync::atomic::Ordering::Relaxed;
        match outcome {
            Ok(Ok(stream)) => {
                self.ok.fetch_add(1, Relaxed);
                Ok(stream)
            }
            Ok(Err(e)) => {
                self.failed.fetch_add(1, Relaxed);
                Err(e.to_string())
            }
            Err(_) => {
                self.timed_out.fetch_add(1, Relaxed);
                Err("no handshake within the deadline".to_owned())
            }
        }
    }
}
