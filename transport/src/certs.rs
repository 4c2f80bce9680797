//! The cluster's certificates: one CA, one certificate per broker naming its id.
//!
//! A broker's id is in its certificate as the DNS subject alternative name
//! `broker-<id>.spate` ([`broker_dns_name`]); a client connecting to broker `I` asks TLS for
//! that name, so the server's certificate is checked against the id the client meant.
//!
//! Files (the contract of `spate cluster certs --out DIR --brokers N`):
//! - `DIR/ca.pem`: the cluster CA certificate (PEM), the only trust anchor.
//! - `DIR/broker-I.pem`: broker I's certificate (PEM), signed by the CA, for I = 1..=N.
//! - `DIR/broker-I.key`: broker I's private key (PKCS#8 PEM, mode 0600).
//!
//! The CA's private key is never written: all broker certificates are made in one run.
//! Adding a broker means generating the cluster's certificates again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A broker's id, as the replication core names nodes.
pub type BrokerId = u32;

/// Brokers one `generate_cluster` call makes certificates for (a sanity bound, not a design
/// limit of the cluster).
pub const CLUSTER_BROKERS_MAX: u32 = 1024;

const DNS_PREFIX: &str = "broker-";
const DNS_SUFFIX: &str = ".spate";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a PEM {what}: {source}")]
    Pem { path: PathBuf, what: &'static str, source: rustls_pki_types::pem::Error },
    #[error("broker count {0} is outside 1..={CLUSTER_BROKERS_MAX}")]
    BrokerCount(u32),
    #[error("broker id 0 is not valid (ids start at 1)")]
    BrokerIdZero,
}

/// The DNS name that carries broker `id` in its certificate.
pub fn broker_dns_name(id: BrokerId) -> String {
    format!("{DNS_PREFIX}{id}{DNS_SUFFIX}")
}

/// The broker id in a DNS name made by [`broker_dns_name`]; `None` for any other name
/// (including leading zeros or signs, so one id has exactly one name).
pub fn parse_broker_dns_name(name: &str) -> Option<BrokerId> {
    let digits = name.strip_prefix(DNS_PREFIX)?.strip_suffix(DNS_SUFFIX)?;
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// One broker's certificate and key, in PEM.
#[derive(Clone)]
pub struct BrokerPem {
    pub broker_id: BrokerId,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A cluster's certificates, in memory, in PEM.
#[derive(Clone)]
pub struct ClusterPem {
    pub ca_pem: String,
    /// Broker 1 first.
    pub brokers: Vec<BrokerPem>,
}

/// Makes a new CA and certificates for brokers 1..=`brokers`.
pub fn generate_cluster(brokers: u32) -> Result<ClusterPem, CertError> {
    if brokers == 0 || brokers > CLUSTER_BROKERS_MAX {
        return Err(CertError::BrokerCount(brokers));
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "Spate cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut out = Vec::with_capacity(brokers as usize);
    for broker_id in 1..=brokers {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![broker_dns_name(broker_id)])?;
        params.distinguished_name.push(DnType::CommonName, broker_dns_name(broker_id));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A broker is a server to its followers and a client to its leaders.
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        out.push(BrokerPem { broker_id, cert_pem: cert.pem(), key_pem: key.serialize_pem() });
    }
    Ok(ClusterPem { ca_pem: ca_cert.pem(), brokers: out })
}

/// Path of the CA certificate in a certificate directory.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// Path of broker `id`'s certificate in a certificate directory.
pub fn broker_cert_path(dir: &Path, id: BrokerId) -> PathBuf {
    dir.join(format!("broker-{id}.pem"))
}

/// Path of broker `id`'s private key in a certificate directory.
pub fn broker_key_path(dir: &Path, id: BrokerId) -> PathBuf {
    dir.join(format!("broker-{id}.key"))
}

/// Generates a cluster's certificates and writes them into `dir` (created if missing).
pub fn write_cluster_certs(dir: &Path, brokers: u32) -> Result<ClusterPem, CertError> {
    let cluster = generate_cluster(brokers)?;
    fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.into(), source })?;
    write_file(&ca_path(dir), &cluster.ca_pem, 0o644)?;
    for broker in &cluster.brokers {
        write_file(&broker_cert_path(dir, broker.broker_id), &broker.cert_pem, 0o644)?;
        write_file(&broker_key_path(dir, broker.broker_id), &broker.key_pem, 0o600)?;
    }
    Ok(cluster)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io { path: path.into(), source };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// What one broker needs for mutual TLS: the cluster CA, its own certificate and key.
pub struct BrokerCredentials {
    pub broker_id: BrokerId,
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for BrokerCredentials {
    fn clone(&self) -> Self {
        Self {
            broker_id: self.broker_id,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for BrokerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("BrokerCredentials").field("broker_id", &self.broker_id).finish()
    }
}

impl BrokerCredentials {
    /// Credentials of broker `id` from PEM in memory.
    pub fn from_pem(
        broker_id: BrokerId,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CertError> {
        if broker_id == 0 {
            return Err(CertError::BrokerIdZero);
        }
        let pem = |what, source| CertError::Pem { path: PathBuf::from("<memory>"), what, source };
        Ok(Self {
            broker_id,
            ca: CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| pem("CA", e))?,
            cert: CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| pem("certificate", e))?,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem("key", e))?,
        })
    }

    /// Credentials of broker `id` from three PEM files (`--tls-ca`, `--tls-cert`, `--tls-key`):
    /// the cluster CA, this broker's certificate and its key, wherever the operator keeps them.
    pub fn from_files(
        broker_id: BrokerId,
        ca_file: &Path,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<Self, CertError> {
        if broker_id == 0 {
            return Err(CertError::BrokerIdZero);
        }
        let ca = CertificateDer::from_pem_file(ca_file).map_err(|e| pem_error(ca_file, "CA", e))?;
        let cert = CertificateDer::from_pem_file(cert_file)
            .map_err(|e| pem_error(cert_file, "certificate", e))?;
        let key =
            PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_error(key_file, "key", e))?;
        Ok(Self { broker_id, ca, cert, key })
    }

    /// Credentials of broker `id` from a certificate directory written by
    /// [`write_cluster_certs`].
    pub fn load(dir: &Path, broker_id: BrokerId) -> Result<Self, CertError> {
        if broker_id == 0 {
            return Err(CertError::BrokerIdZero);
        }
        let ca_file = ca_path(dir);
        let cert_file = broker_cert_path(dir, broker_id);
        let key_file = broker_key_path(dir, broker_id);
        let ca =
            CertificateDer::from_pem_file(&ca_file).map_err(|e| pem_error(&ca_file, "CA", e))?;
        let cert = CertificateDer::from_pem_file(&cert_file)
            .map_err(|e| pem_error(&cert_file, "certificate", e))?;
        let key =
            PrivateKeyDer::from_pem_file(&key_file).map_err(|e| pem_error(&key_file, "key", e))?;
        Ok(Self { broker_id, ca, cert, key })
    }
}

fn pem_error(path: &Path, what: &'static str, source: rustls_pki_types::pem::Error) -> CertError {
    match source {
        rustls_pki_types::pem::Error::Io(source) => CertError::Io { path: path.into(), source },
        source => CertError::Pem { path: path.into(), what, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_round_trips_and_rejects_others() {
        for id in [1, 7, 42, u32::MAX] {
            assert_eq!(parse_broker_dns_name(&broker_dns_name(id)), Some(id));
        }
        for name in ["broker-.spate", "broker-01.spate", "broker-1.spate.evil", "broker-+1.spate"] {
            assert_eq!(parse_broker_dns_name(name), None, "{name}");
        }
        assert_eq!(parse_broker_dns_name("broker-4294967296.spate"), None);
        assert_eq!(parse_broker_dns_name("x.broker-1.spate"), None);
    }

    #[test]
    fn writes_and_loads_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = write_cluster_certs(dir.path(), 3).unwrap();
        assert_eq!(cluster.brokers.len(), 3);
        for id in 1..=3 {
            let creds = BrokerCredentials::load(dir.path(), id).unwrap();
            assert_eq!(creds.broker_id, id);
            let names = crate::tls::certificate_broker_id(&creds.cert).unwrap();
            assert_eq!(names, id);
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(broker_key_path(dir.path(), id)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(BrokerCredentials::load(dir.path(), 4), Err(CertError::Io { .. })));
        assert!(matches!(BrokerCredentials::load(dir.path(), 0), Err(CertError::BrokerIdZero)));
        assert!(matches!(generate_cluster(0), Err(CertError::BrokerCount(0))));
    }
}
