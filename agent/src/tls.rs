//! TLS for the agent API: the server configuration, and the certificates.
//!
//! One crypto provider for the whole process (ring): it is installed as the
//! process default at start-up and every configuration is built with it.
//! The server speaks TLS 1.3 only. With a CA (`--ca-cert`) it *requires* a
//! client certificate signed by that CA: a client without one, or with one
//! from another CA, fails the handshake.
//!
//! Without `--tls-cert/--tls-key` the agent uses a self-signed ECDSA P-256
//! certificate (SANs: hostname, node name, localhost, 127.0.0.1, ::1),
//! generated once and kept in the state directory so restarts keep it.
//! `ingero certs` makes a small PKI: a CA, node (server) certificates and
//! client certificates, private keys written 0600.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::{ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier, version::TLS13};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Why a TLS setup or a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file cannot be read or is not valid PEM.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O or PEM error.
        message: String,
    },
    /// A certificate or key file (or its directory) cannot be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        message: String,
    },
    /// A PEM file holds no item of the expected kind (or the key does not parse).
    #[error("{path} holds no {what}")]
    Empty {
        /// The file that was read.
        path: PathBuf,
        /// What was expected in it: "PEM certificate" or "PEM private key".
        what: &'static str,
    },
    /// rustls refused the configuration (protocol versions, CA roots,
    /// certificate and key that do not match).
    #[error("invalid TLS setup: {0}")]
    Config(String),
    /// A key or certificate could not be generated or signed, or a name is
    /// not valid as a SAN or certificate name.
    #[error("cannot create a certificate: {0}")]
    Generate(String),
    /// The file to create already exists; `--force` replaces it.
    #[error("{0} already exists: pass --force to replace it")]
    Exists(PathBuf),
}

/// The process's crypto provider (ring).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| TlsError::Empty {
        path: path.to_path_buf(),
        what: "PEM private key",
    })
}

/// `AB:CD:...` SHA-256 fingerprint of a DER certificate.
#[must_use]
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum ServerIdentity {
    /// The operator's certificate chain and key.
    Files {
        /// PEM certificate chain, leaf first.
        cert: PathBuf,
        /// PEM private key of the leaf certificate.
        key: PathBuf,
    },
    /// A self-signed certificate kept in this directory (made if missing).
    SelfSigned {
        /// Directory holding `agent.pem` and `agent-key.pem`.
        dir: PathBuf,
        /// Node name, put in the certificate's SANs and common name.
        node: String,
    },
}

/// A ready server configuration and what to tell the operator about it.
#[derive(Debug)]
pub struct ServerTls {
    /// The rustls server configuration (TLS 1.3, ALPN h2 and http/1.1).
    pub config: Arc<ServerConfig>,
    /// SHA-256 fingerprint of the leaf certificate, as `AB:CD:...`.
    pub fingerprint: String,
    /// Path of the certificate chain in use (the operator's or the self-signed one).
    pub cert_path: PathBuf,
    /// True when clients must present a certificate signed by the CA (mutual TLS).
    pub mutual: bool,
    /// Sentences about certificates in use that have expired or expire
    /// within [`EXPIRY_NOTICE`], for the agent to print at start.
    pub warnings: Vec<String>,
}

/// One DER element at the start of `data`: its tag, its contents and what
/// follows it.
fn der_element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The `notAfter` of an X.509 certificate (DER), read from its validity.
fn not_after(der: &[u8]) -> Option<time::OffsetDateTime> {
    let (_, cert, _) = der_element(der)?;
    let (_, tbs, _) = der_element(cert)?;
    let (tag, _, mut rest) = der_element(tbs)?;
    if tag == 0xa0 {
        // Explicit version; the serial number follows.
        rest = der_element(rest)?.2;
    }
    let rest = der_element(rest)?.2; // signature algorithm
    let rest = der_element(rest)?.2; // issuer
    let (_, validity, _) = der_element(rest)?;
    let (_, _, after) = der_element(validity)?;
    let (tag, text, _) = der_element(after)?;
    let text = std::str::from_utf8(text).ok()?;
    let digits = |range: std::ops::Range<usize>| text.get(range)?.parse::<i32>().ok();
    let (year, at) = match tag {
        0x17 => {
            let yy = digits(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        0x18 => (digits(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| digits(at + 2 * i..at + 2 * i + 2).and_then(|v| u8::try_from(v).ok());
    let month = time::Month::try_from(field(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, field(1)?).ok()?;
    let clock = time::Time::from_hms(field(2)?, field(3)?, field(4)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

/// How soon before a certificate expires the agent says so at start.
pub const EXPIRY_NOTICE: time::Duration = time::Duration::days(7);

/// A sentence when the certificate `der` (read from `path`) has expired at
/// `now` or expires within [`EXPIRY_NOTICE`]; `None` otherwise (or when it
/// cannot be parsed: rustls reports that).
#[must_use]
pub fn expiry_warning(der: &CertificateDer<'_>, path: &Path, now: time::OffsetDateTime) -> Option<String> {
    let not_after = not_after(der)?;
    let date = not_after.date();
    if not_after <= now {
        Some(format!(
            "the certificate {} expired on {date}: clients will refuse it; renew it (ingero certs) and restart the agent",
            path.display()
        ))
    } else if not_after - now <= EXPIRY_NOTICE {
        Some(format!(
            "the certificate {} expires on {date} (in {} days): renew it (ingero certs) before then",
            path.display(),
            (not_after - now).whole_days()
        ))
    } else {
        None
    }
}

/// The server configuration: TLS 1.3 only; client certificates required
/// and verified against `ca` when given.
pub fn server_config(identity: &ServerIdentity, ca: Option<&Path>) -> Result<ServerTls, TlsError> {
    let (cert_path, key_path) = match identity {
        ServerIdentity::Files { cert, key } => (cert.clone(), key.clone()),
        ServerIdentity::SelfSigned { dir, node } => self_signed(dir, node)?,
    };
    let chain = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let fp = fingerprint(&chain[0]);
    let now = time::OffsetDateTime::now_utc();
    let mut warnings: Vec<String> = expiry_warning(&chain[0], &cert_path, now).into_iter().collect();
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                warnings.extend(expiry_warning(&c, ca, now));
                roots
                    .add(c)
                    .map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert_path.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint: fp,
        cert_path,
        mutual: ca.is_some(),
        warnings,
    })
}

/// Writes `data` to `path`, readable by the owner only.
pub fn write_private(path: &Path, data: &[u8], force: bool) -> Result<(), TlsError> {
    if path.exists() && !force {
        return Err(TlsError::Exists(path.to_path_buf()));
    }
    let err = |e: std::io::Error| TlsError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // `mode` applies to new files only: tighten an existing one too.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(err)?;
    f.write_all(data).map_err(err)
}

#[expect(clippy::needless_pass_by_value, reason = "used as map_err(gen_err)")]
fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Validity: from a day ago (clock skew) for `days` days.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// Whether `name` is a host name a certificate can carry: dot-separated
/// labels of letters, digits and `-` (not at either end), 1 to 63
/// characters each, 253 in all.
fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// SANs for a server: names as DNS entries, addresses as IPs, plus loopback.
fn server_sans(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut sans = Vec::new();
    for n in names.iter().map(String::as_str).chain(["localhost"]) {
        let san = match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.try_into().map_err(gen_err)?),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    for ip in ["127.0.0.1", "::1"] {
        let san = SanType::IpAddress(ip.parse().map_err(|_| TlsError::Generate(ip.into()))?);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// The self-signed certificate in `dir` (made on first use): its paths.
fn self_signed(dir: &Path, node: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join("agent.pem"), dir.join("agent-key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = server_sans(&[crate::config::hostname(), node.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ingero agent {node}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, 825);
    let made = params.self_signed(&pair).map_err(gen_err)?;
    write_private(&key, pair.serialize_pem().as_bytes(), true)?;
    write_private(&cert, made.pem().as_bytes(), true)?;
    Ok((cert, key))
}

/// `ingero certs init-ca`: a CA certificate and key in `dir`.
pub fn init_ca(dir: &Path, force: bool) -> Result<(PathBuf, String), TlsError> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if !force && (cert.exists() || key.exists()) {
        return Err(TlsError::Exists(cert));
    }
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "ingero fleet CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let made = params.self_signed(&pair).map_err(gen_err)?;
    write_private(&key, pair.serialize_pem().as_bytes(), true)?;
    write_private(&cert, made.pem().as_bytes(), true)?;
    Ok((cert, fingerprint(made.der())))
}

/// What an issued certificate is for.
#[derive(Debug, Clone)]
pub enum Role {
    /// An agent: server authentication for its names and addresses.
    Node {
        /// Node name: the common name, a SAN, and the files' base name.
        name: String,
        /// More host names or IP addresses the node answers on.
        extra_sans: Vec<String>,
    },
    /// A fleet client: client authentication.
    Client {
        /// Client name: the common name, its one SAN, and the files' base name.
        name: String,
    },
}

/// `ingero certs issue`: a certificate signed by the CA in `dir`; returns
/// the certificate and key paths.
pub fn issue(dir: &Path, role: &Role, force: bool) -> Result<(PathBuf, PathBuf), TlsError> {
    let ca_cert = fs::read_to_string(dir.join("ca.pem")).map_err(|e| TlsError::Read {
        path: dir.join("ca.pem"),
        message: format!("{e} (run `ingero certs init-ca` first)"),
    })?;
    let ca_key_pem = fs::read_to_string(dir.join("ca-key.pem")).map_err(|e| TlsError::Read {
        path: dir.join("ca-key.pem"),
        message: e.to_string(),
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(gen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(gen_err)?;
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let name = match role {
        Role::Node { name, extra_sans } => {
            if let Some(bad) = extra_sans
                .iter()
                .find(|s| s.parse::<IpAddr>().is_err() && !valid_dns_name(s))
            {
                return Err(TlsError::Generate(format!(
                    "'{bad}' is neither a host name nor an IP address; give --san a DNS name (gpu-node-01.example) or an address (10.0.0.7)"
                )));
            }
            let mut names = vec![name.clone()];
            names.extend(extra_sans.iter().cloned());
            params.subject_alt_names = server_sans(&names)?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            name
        }
        Role::Client { name } => {
            params.subject_alt_names = vec![SanType::DnsName(name.as_str().try_into().map_err(gen_err)?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            name
        }
    };
    crate::config::validate_node(name).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name.push(DnType::CommonName, name.clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 825);
    let made = params.signed_by(&pair, &issuer).map_err(gen_err)?;
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    // The CA's own files are never replaced by a certificate, --force or not.
    let ca_files = [dir.join("ca.pem"), dir.join("ca-key.pem")];
    if ca_files.contains(&cert) || ca_files.contains(&key) {
        return Err(TlsError::Generate(format!(
            "the name '{name}' would overwrite the CA's files in {}: choose another name",
            dir.display()
        )));
    }
    if !force && (cert.exists() || key.exists()) {
        return Err(TlsError::Exists(cert));
    }
    write_private(&key, pair.serialize_pem().as_bytes(), true)?;
    write_private(&cert, made.pem().as_bytes(), true)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn expired_and_expiring_certificates_are_announced() -> anyhow::Result<()> {
        let key = rcgen::KeyPair::generate()?;
        let now = time::OffsetDateTime::now_utc();
        let cert_until = |days: i64| -> anyhow::Result<CertificateDer<'static>> {
            let mut params = CertificateParams::new(vec!["node".to_owned()])?;
            params.not_before = now - time::Duration::days(400);
            params.not_after = now + time::Duration::days(days);
            Ok(params.self_signed(&key)?.der().clone())
        };
        let path = Path::new("/etc/ingero/node.pem");
        let expired = expiry_warning(&cert_until(-2)?, path, now).expect("expired");
        assert!(
            expired.contains("expired on") && expired.contains("renew"),
            "{expired}"
        );
        let soon = expiry_warning(&cert_until(3)?, path, now).expect("soon");
        assert!(
            soon.contains("expires on") && soon.contains("in 2 days") || soon.contains("in 3 days"),
            "{soon}"
        );
        assert_eq!(expiry_warning(&cert_until(30)?, path, now), None);
        Ok(())
    }

    #[test]
    fn names_that_would_replace_the_ca_or_are_not_host_names_are_refused() -> anyhow::Result<()> {
        install_provider();
        let dir = tempfile::tempdir()?;
        init_ca(dir.path(), false)?;
        let ca_key = std::fs::read(dir.path().join("ca-key.pem"))?;
        for name in ["ca", "ca-key"] {
            let client = Role::Client { name: name.into() };
            let err = issue(dir.path(), &client, true).expect_err("the CA's files are kept");
            assert!(err.to_string().contains("CA's files"), "{err}");
        }
        assert_eq!(
            std::fs::read(dir.path().join("ca-key.pem"))?,
            ca_key,
            "the CA key is untouched"
        );
        for bad in ["bad name", "-x", "a..b", "x_y.example", "héllo"] {
            let node = Role::Node {
                name: "gpu-node-09".into(),
                extra_sans: vec![bad.into()],
            };
            let err = issue(dir.path(), &node, true).expect_err("a bad SAN is refused");
            assert!(
                err.to_string().contains("neither a host name nor an IP"),
                "{bad}: {err}"
            );
        }
        assert!(valid_dns_name("gpu-node-01.cluster.example") && valid_dns_name("localhost"));
        Ok(())
    }

    #[test]
    fn a_fleet_pki_is_three_calls_and_keys_are_private() -> anyhow::Result<()> {
        install_provider();
        let dir = tempfile::tempdir()?;
        let (ca, fp) = init_ca(dir.path(), false)?;
        assert_eq!(fp.len(), 95, "SHA-256 as 32 hex pairs: {fp}");
        let (node_cert, node_key) = issue(
            dir.path(),
            &Role::Node {
                name: "gpu-node-01".into(),
                extra_sans: vec!["10.0.0.7".into()],
            },
            false,
        )?;
        let (client_cert, client_key) = issue(
            dir.path(),
            &Role::Client {
                name: "oncall".into(),
            },
            false,
        )?;
        for p in [&node_key, &client_key, &dir.path().join("ca-key.pem")] {
            assert_eq!(
                fs::metadata(p)?.permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
        // The node certificate makes a valid mutual-TLS server config.
        let tls = server_config(
            &ServerIdentity::Files {
                cert: node_cert,
                key: node_key,
            },
            Some(&ca),
        )?;
        assert!(tls.mutual);
        assert_eq!(load_certs(&client_cert)?.len(), 1);
        // Nothing is overwritten silently.
        assert!(matches!(init_ca(dir.path(), false), Err(TlsError::Exists(_))));
        Ok(())
    }

    #[test]
    fn the_self_signed_certificate_survives_restarts() -> anyhow::Result<()> {
        install_provider();
        let dir = tempfile::tempdir()?;
        let id = ServerIdentity::SelfSigned {
            dir: dir.path().to_path_buf(),
            node: "n1".into(),
        };
        let first = server_config(&id, None)?;
        let second = server_config(&id, None)?;
        assert_eq!(first.fingerprint, second.fingerprint);
        assert!(!first.mutual);
        Ok(())
    }
}
