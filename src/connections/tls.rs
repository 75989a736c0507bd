//! TLS: the acceptor, from PEM, offering HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::BoxError;

/// TLS from PEM: a certificate chain and key, and optionally the CA whose
/// client certificates are required (mTLS). Offers HTTP/2 (ALPN `h2`) and,
/// for browsers of the board and of gRPC-Web, HTTP/1.1.
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<TlsAcceptor, BoxError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
    let certs = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot parse certificate: {e}"))
    };
    let builder = ServerConfig::builder();
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs(ca)?);
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder(roots.into()).build()?)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("cannot parse private key: {e}"))?;
    let mut config = builder.with_single_cert(certs(cert_pem)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
