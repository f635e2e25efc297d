//! Test PKI (rcgen): a CA and leaves it signs for `localhost` and
//! 127.0.0.1, written as PEM files for servers and turned into rustls
//! client configurations for clients.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    ClientConfig, RootCertStore,
};
use std::{path::Path, sync::Arc};

pub struct Ca {
    pub cert: Certificate,
    key: KeyPair,
}

/// A certificate signed by a [`Ca`] and its key.
pub struct Leaf {
    pub cert: Certificate,
    pub key: KeyPair,
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_string_lossy().to_string()
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf for a server (`server`) or a client certificate.
    pub fn leaf(&self, server: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        Leaf {
            cert: p.signed_by(&key, &self.cert, &self.key).unwrap(),
            key,
        }
    }

    /// Writes the CA certificate as `dir/<name>.pem`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> String {
        write(&dir.join(format!("{name}.pem")), &self.cert.pem())
    }

    /// A client configuration that trusts this CA, presenting `client`'s
    /// certificate if given.
    pub fn client_config(&self, client: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let cfg = match client {
            Some(l) => b
                .with_client_auth_cert(
                    vec![CertificateDer::from(l.cert.der().to_vec())],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key.serialize_der())),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        Arc::new(cfg)
    }
}

impl Leaf {
    /// Writes `dir/<name>.pem` and `dir/<name>.key`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (String, String) {
        (
            write(&dir.join(format!("{name}.pem")), &self.cert.pem()),
            write(&dir.join(format!("{name}.key")), &self.key.serialize_pem()),
        )
    }
}
