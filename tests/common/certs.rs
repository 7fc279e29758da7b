//! Throw-away certificates for the TLS tests, made with openssl: a CA, edge
//! certificates for 127.0.0.1 and localhost signed by it, and the SPKI hash Chromium
//! is told to trust.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`ca.pem`, `ca-key.pem`) in `dir`.
pub fn make_ca(dir: &Path) -> PathBuf {
    let (ca, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=raftcast test CA",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        ca.to_str().unwrap(),
    ]);
    ca
}

/// An edge certificate for 127.0.0.1 and localhost named `cn`, signed by the CA in
/// `dir`, written to `cert` and `key` by renaming (as a deployment tool would).
pub fn make_cert(dir: &Path, cn: &str, serial: u32, cert: &Path, key: &Path) {
    sign(dir, cn, serial, cert, key, "serverAuth");
}

/// A member's certificate for the cluster's mutual TLS (server and client, for
/// 127.0.0.1), signed by the CA in `dir`: `dir/NAME.pem` and `dir/NAME-key.pem`.
pub fn make_member(dir: &Path, name: &str, serial: u32) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    sign(dir, name, serial, &cert, &key, "serverAuth,clientAuth");
}

fn sign(dir: &Path, cn: &str, serial: u32, cert: &Path, key: &Path, usage: &str) {
    let (tmp_cert, tmp_key, csr, ext) =
        (dir.join("new.pem"), dir.join("new-key.pem"), dir.join("new.csr"), dir.join("ext.cnf"));
    std::fs::write(&ext, format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")).unwrap();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        tmp_key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        dir.join("ca.pem").to_str().unwrap(),
        "-CAkey",
        dir.join("ca-key.pem").to_str().unwrap(),
        "-set_serial",
        &serial.to_string(),
        "-days",
        "1",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        tmp_cert.to_str().unwrap(),
    ]);
    std::fs::rename(&tmp_cert, cert).unwrap();
    std::fs::rename(&tmp_key, key).unwrap();
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the certificate `cert` (PEM), the
/// form Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().expect("sh runs");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && hash.len() == 44, "{script}: {hash:?} {}", String::from_utf8_lossy(&out.stderr));
    hash
}
