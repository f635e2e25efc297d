//! rustls client configuration: custom CA (`--ca-cert`, else the system
//! bundle) and optional client certificate for mTLS.

use std::{path::Path, sync::Arc};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}: give a PEM file")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let ca_path = ca.unwrap_or(Path::new(SYSTEM_BUNDLE));
    let pem = read(ca_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(TlsError::Empty {
            path: ca_path.display().to_string(),
            what: "CA certificate",
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = match (cert, key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert)?;
            let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
                .flatten()
                .collect();
            if chain.is_empty() {
                return Err(TlsError::Empty {
                    path: cert.display().to_string(),
                    what: "certificate",
                });
            }
            let key_pem = read(key)?;
            let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| TlsError::Empty {
                    path: key.display().to_string(),
                    what: "private key",
                })?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}
