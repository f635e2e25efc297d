//! TLS (rustls) for `--tls-cert/--tls-key`, and client-certificate
//! verification against `--tls-client-ca` (mTLS): without a valid client
//! certificate the handshake fails and the connection is dropped.

use std::{fs::File, io::BufReader, path::Path, sync::Arc};

use anyhow::{anyhow, Context, Result};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot parse PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "{} holds no PEM certificate: pass a PEM file with -----BEGIN CERTIFICATE-----",
            path.display()
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .with_context(|| format!("cannot parse the PEM key in {}", path.display()))?
        .ok_or_else(|| {
            anyhow!(
                "{} holds no PEM private key: pass a PKCS#8, PKCS#1 or SEC1 key",
                path.display()
            )
        })
}

/// Builds the server config; errors say which file is wrong.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("bad CA certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .with_context(|| {
            format!(
                "{} and {} do not form a usable certificate/key pair",
                cert.display(),
                key_path.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
