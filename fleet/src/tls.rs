//! The client's TLS configuration: TLS 1.3 with the ring provider (the
//! same single provider as the agent), the fleet CA (or an agent's
//! self-signed certificate) as the only trust root, and a client
//! certificate when the agents require mutual TLS.

use std::{path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore, version::TLS13};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::FleetError;

/// How to reach the agents.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA that signed the agents' certificates (required for TLS).
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate chain to present when the agents require mutual TLS;
    /// goes with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`; one without the other is a
    /// configuration error.
    pub client_key: Option<PathBuf>,
    /// Plain HTTP instead of TLS.
    pub no_tls: bool,
    /// Bearer token sent with every request.
    pub token: Option<String>,
}

fn config_err(path: &std::path::Path, what: &str, e: impl std::fmt::Display) -> FleetError {
    FleetError::Config(format!("{} ({what}): {e}", path.display()))
}

impl ClientTls {
    /// A rustls configuration; `versions` is TLS 1.3 unless a test asks for
    /// another.
    pub fn rustls_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<ClientConfig, FleetError> {
        let ca = self.ca_cert.as_ref().ok_or_else(|| {
            FleetError::Config(
                "TLS needs --ca-cert: the fleet CA (ingero certs init-ca), or an agent's self-signed certificate".into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| config_err(ca, "CA certificate", e))? {
            roots
                .add(cert.map_err(|e| config_err(ca, "CA certificate", e))?)
                .map_err(|e| config_err(ca, "CA certificate", e))?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .map_err(|e| FleetError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| config_err(cert, "client certificate", e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| config_err(cert, "client certificate", e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| config_err(key, "client key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| FleetError::Config(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(FleetError::Config(
                    "--client-cert and --client-key go together".into(),
                ));
            }
        };
        // HTTP/1.1: a fleet client sends one request per agent at a time,
        // and over HTTP/2 a refused client certificate surfaces only as
        // "connection closed" instead of the server's alert.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The default: TLS 1.3 only.
    pub fn tls13(&self) -> Result<ClientConfig, FleetError> {
        self.rustls_config(&[&TLS13])
    }
}
