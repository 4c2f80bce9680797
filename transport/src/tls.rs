//! Mutual TLS between brokers: rustls configs that trust only the cluster CA, and the broker id
//! of a verified peer certificate.
//!
//! Both sides present a certificate. The server requires a client certificate signed by the
//! cluster CA (`WebPkiClientVerifier`); the client checks the server's certificate against the
//! CA *and* against the name `broker-<id>.spate` of the broker it meant to reach. TLS 1.3 only
//! (QUIC), crypto provider `ring` (NOTES.md: faster here than aws-lc-rs).
//!
//! TLS 1.3 finishes the client's handshake before the server has judged the client's
//! certificate, so a client whose certificate is refused still sees its handshake succeed; the
//! application-level hello of `endpoint.rs` covers that.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::certs::{parse_broker_dns_name, BrokerCredentials, BrokerId};

/// ALPN of Spate's broker-to-broker protocol; a peer speaking anything else is refused by TLS.
pub const ALPN: &[u8] = b"spate-broker/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC cannot use this TLS configuration: {0}")]
    Quic(String),
    #[error("peer certificate is not parseable X.509: {0}")]
    Certificate(String),
    #[error("peer certificate names {0} broker ids; exactly one is required")]
    BrokerNames(usize),
    #[error("peer presented no certificate")]
    NoCertificate,
}

/// The crypto provider every config of this crate uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &BrokerCredentials) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(creds.ca.clone())?;
    Ok(Arc::new(roots))
}

/// Server side: presents this broker's certificate, requires a client certificate from the
/// cluster CA.
pub fn server_config(creds: &BrokerCredentials) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![creds.cert.clone()], creds.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Client side: trusts only the cluster CA, presents this broker's certificate.
pub fn client_config(creds: &BrokerCredentials) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(creds)?)
        .with_client_auth_cert(vec![creds.cert.clone()], creds.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// quinn-proto's server crypto over [`server_config`].
pub fn quic_server_crypto(
    creds: &BrokerCredentials,
) -> Result<Arc<quinn_proto::crypto::rustls::QuicServerConfig>, TlsError> {
    let config = quinn_proto::crypto::rustls::QuicServerConfig::try_from(server_config(creds)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(Arc::new(config))
}

/// quinn-proto's client crypto over [`client_config`].
pub fn quic_client_crypto(
    creds: &BrokerCredentials,
) -> Result<Arc<quinn_proto::crypto::rustls::QuicClientConfig>, TlsError> {
    let config = quinn_proto::crypto::rustls::QuicClientConfig::try_from(client_config(creds)?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The broker id named by a certificate (its one `broker-<id>.spate` DNS name).
///
/// Only call this on a certificate that TLS has verified against the cluster CA: the name is
/// what the CA vouches for, nothing more.
pub fn certificate_broker_id(cert: &CertificateDer<'_>) -> Result<BrokerId, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TlsError::Certificate(format!("{e:?}")))?;
    let mut ids = parsed.valid_dns_names().filter_map(parse_broker_dns_name);
    let first = ids.next();
    let others = ids.count();
    match (first, others) {
        (Some(id), 0) => Ok(id),
        (None, _) => Err(TlsError::BrokerNames(0)),
        (Some(_), n) => Err(TlsError::BrokerNames(n + 1)),
    }
}

/// The broker id of a peer from the certificate chain TLS verified (leaf first).
pub fn peer_broker_id(chain: &[CertificateDer<'_>]) -> Result<BrokerId, TlsError> {
    certificate_broker_id(chain.first().ok_or(TlsError::NoCertificate)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{broker_dns_name, generate_cluster, ClusterPem};
    use rustls_pki_types::ServerName;

    fn creds(cluster: &ClusterPem, id: BrokerId) -> BrokerCredentials {
        let b = &cluster.brokers[id as usize - 1];
        BrokerCredentials::from_pem(id, &cluster.ca_pem, &b.cert_pem, &b.key_pem).unwrap()
    }

    /// Runs a TLS handshake in memory; returns the server's error, the client's error, and the
    /// client certificate chain the server saw.
    fn handshake(
        client: &BrokerCredentials,
        server: &BrokerCredentials,
        server_name: &str,
    ) -> (Option<rustls::Error>, Option<rustls::Error>, Option<Vec<CertificateDer<'static>>>) {
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(client_config(client).unwrap(), name).unwrap();
        let mut s = rustls::ServerConnection::new(server_config(server).unwrap()).unwrap();
        let (mut server_error, mut client_error) = (None, None);
        for _ in 0..16 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).unwrap();
                if let Err(e) = s.process_new_packets() {
                    server_error = Some(e);
                }
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).unwrap();
                if let Err(e) = c.process_new_packets() {
                    client_error = Some(e);
                }
            }
            if server_error.is_some() || client_error.is_some() {
                break;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        let seen = s
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
        (server_error, client_error, seen)
    }

    #[test]
    fn same_ca_handshakes_and_names_the_peer() {
        let cluster = generate_cluster(2).unwrap();
        let (server_error, client_error, seen) =
            handshake(&creds(&cluster, 1), &creds(&cluster, 2), &broker_dns_name(2));
        assert!(
            server_error.is_none() && client_error.is_none(),
            "{server_error:?} {client_error:?}"
        );
        assert_eq!(peer_broker_id(&seen.unwrap()).unwrap(), 1);
    }

    #[test]
    fn client_cert_from_another_ca_is_refused() {
        let cluster = generate_cluster(2).unwrap();
        let rogue = generate_cluster(1).unwrap();
        // The rogue trusts the real CA (so it accepts the server) but its own cert is not from it.
        let mut rogue = creds(&rogue, 1);
        rogue.ca = creds(&cluster, 1).ca;
        let (server_error, _, _) = handshake(&rogue, &creds(&cluster, 2), &broker_dns_name(2));
        assert!(
            matches!(server_error, Some(rustls::Error::InvalidCertificate(_))),
            "{server_error:?}"
        );
    }

    #[test]
    fn server_cert_from_another_ca_is_refused() {
        let cluster = generate_cluster(2).unwrap();
        let rogue = generate_cluster(2).unwrap();
        let (_, client_error, _) =
            handshake(&creds(&cluster, 1), &creds(&rogue, 2), &broker_dns_name(2));
        assert!(
            matches!(client_error, Some(rustls::Error::InvalidCertificate(_))),
            "{client_error:?}"
        );
    }

    #[test]
    fn server_with_another_broker_id_is_refused_by_name() {
        // The client wants broker 3; broker 2 answers with its own (valid) certificate.
        let cluster = generate_cluster(3).unwrap();
        let (_, client_error, _) =
            handshake(&creds(&cluster, 1), &creds(&cluster, 2), &broker_dns_name(3));
        assert!(
            matches!(client_error, Some(rustls::Error::InvalidCertificate(_))),
            "{client_error:?}"
        );
    }

    #[test]
    fn certificate_id_mismatch_is_detected() {
        let cluster = generate_cluster(3).unwrap();
        let id = certificate_broker_id(&creds(&cluster, 2).cert).unwrap();
        assert_eq!(id, 2);
        assert_ne!(id, 3);
        // A certificate with no broker name (the CA's) names no broker.
        let ca = creds(&cluster, 1).ca;
        assert!(matches!(certificate_broker_id(&ca), Err(TlsError::BrokerNames(0))));
        assert!(matches!(peer_broker_id(&[]), Err(TlsError::NoCertificate)));
    }
}
